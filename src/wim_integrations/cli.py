"""`python -m wim_integrations.cli`: the `wim` command (kept at this path; it lives in `frontends/cli.py`)."""

from .frontends.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
