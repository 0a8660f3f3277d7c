"""Front ends on the engine: the `wim` command line, its progress display, and the HTML reading report."""
