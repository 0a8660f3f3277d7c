"""The package's layers (docs/architecture.md): the import-linter contract in pyproject.toml, and no import cycles
but the one named exception (`WiMResult.to_html()` importing the report renderer when called)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).parents[2]
EXCEPTION = ("wim_integrations.results", "wim_integrations.frontends.html")


def test_each_layer_imports_only_the_layers_below_it() -> None:
    # In a subprocess: import-linter configures logging with dictConfig, which disables every logger already made
    # (later tests read the warnings of LangChain's and our own loggers).
    lint = "from importlinter.cli import lint_imports; raise SystemExit(lint_imports(no_cache=True, no_logo=True))"
    done = subprocess.run([sys.executable, "-c", lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = grimp.build_graph("wim_integrations", cache_dir=None)
    graph.remove_import(importer=EXCEPTION[0], imported=EXCEPTION[1])
    packages = {m for m in graph.modules if graph.find_children(m)}  # re-exports in __init__ files are not layers
    cycles = []
    for importer in sorted(graph.modules - packages):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) - packages):
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain is not None and not set(chain) & packages:
                cycles.append(" -> ".join((importer, *chain)))
    assert cycles == []
