"""Tracing helpers: LangSmith's tracer when a key is set, else an offline recorder of the same run tree.

LangSmith ignores custom events, which is why WiMChain also records margins as child runs; `trace_tree` shows the
tree of runs a tracer sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import langsmith
from langchain_core.tracers import BaseTracer, LangChainTracer
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langchain_core.tracers.schemas import Run

# The fields of a recorded run, as a tracer posts them (None values are left out).
_FIELDS = ("id", "name", "run_type", "parent_run_id", "trace_id", "inputs", "outputs", "error", "tags", "extra")
_TIMES = ("start_time", "end_time")


class RecordingClient(RunCollectorCallbackHandler):
    """An offline tracer: langchain-core's run collector, which keeps every run of a traced call in memory and sends
    nothing. Pass it as a callback (or through `langsmith_tracer`); `recorded` maps each run's id to its fields
    (name, run_type, parent_run_id, inputs, outputs, error, tags, extra: metadata and invocation params, times).

    It was a `langsmith.Client` subclass (it is still what `langsmith_tracer()` records into, as its `client`); it
    now relies only on langchain-core's public run collection, not on a client's internals."""

    name: str = "wim-recording-tracer"

    @property
    def client(self) -> RecordingClient:
        """The recorder itself (where a `LangChainTracer` has its LangSmith client)."""
        return self

    def wait_for_futures(self) -> None:
        """Nothing to wait for: runs are recorded as they end (kept for code written for `LangChainTracer`)."""

    @property
    def recorded(self) -> dict[str, dict[str, Any]]:
        """Run id -> its fields, every run of every traced call, in the order they started."""
        runs = sorted(_walk(self.traced_runs), key=lambda r: r.start_time)  # stable: ties keep tree order
        return {str(r.id): _fields(r) for r in runs}

    @property
    def order(self) -> list[str]:
        return list(self.recorded)

    def children(self, run_id: Any) -> list[dict[str, Any]]:
        return [r for r in self.recorded.values() if str(r.get("parent_run_id")) == str(run_id)]


def _walk(runs: list[Run]) -> Iterator[Run]:
    for run in runs:
        yield run
        yield from _walk(run.child_runs)


def _fields(run: Run) -> dict[str, Any]:
    values = {k: getattr(run, k, None) for k in (*_FIELDS, *_TIMES)}
    return {k: v for k, v in values.items() if v is not None}


def langsmith_tracer(
    project_name: str | None = None, client: langsmith.Client | RecordingClient | None = None
) -> BaseTracer:
    """LangSmith's `LangChainTracer` when LANGSMITH_API_KEY (or LANGCHAIN_API_KEY) is set or a `langsmith.Client` is
    given; otherwise (or given one) a `RecordingClient`, which records the same runs offline."""
    if isinstance(client, RecordingClient):
        return client
    if client is None:
        if not (os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")):
            return RecordingClient()
        client = langsmith.Client()
    return LangChainTracer(project_name=project_name or "wim-integrations", client=client)


def trace_tree(client: RecordingClient, root: Any = None, indent: int = 0) -> str:
    """The recorded runs as an indented tree: name [run_type] tags."""
    recorded = client.recorded
    runs = [r for r in recorded.values() if r.get("parent_run_id") is None] if root is None else client.children(root)
    lines: list[str] = []
    for run in runs:
        tags = ",".join(sorted(run.get("tags") or []))
        lines.append(f"{'  ' * indent}{run.get('name')} [{run.get('run_type')}]{' ' + tags if tags else ''}")
        child_text = trace_tree(client, run["id"], indent + 1)
        if child_text:
            lines.append(child_text)
    return "\n".join(lines)
