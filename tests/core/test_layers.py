"""The package's layers (docs/architecture.md): the import-linter contract in pyproject.toml, and no import cycles
but the one named exception (`WiMResult.to_html()` importing the report renderer when called)."""

from __future__ import annotations

from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).parents[2]
EXCEPTION = ("wim_integrations.results", "wim_integrations.frontends.html")


def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


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
