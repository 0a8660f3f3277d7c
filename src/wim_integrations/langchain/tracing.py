"""LangSmith helpers: a tracer that goes to LangSmith when a key is set, else to an offline recording client.

LangSmith ignores custom events, which is why WiMChain also records margins as child runs; `trace_tree` shows the
tree exactly as the tracer would send it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import langsmith
from langchain_core.tracers import LangChainTracer


class RecordingClient(langsmith.Client):
    """A `langsmith.Client` that keeps the runs the tracer would send, in memory, and sends nothing."""

    def __init__(self) -> None:
        super().__init__(api_key="offline-recording", api_url="http://127.0.0.1:9", auto_batch_tracing=False)
        self.recorded: dict[str, dict[str, Any]] = {}  # run id -> merged create/update payloads
        self.order: list[str] = []
        self._record_lock = threading.Lock()

    def _record(self, run_id: Any, fields: dict[str, Any]) -> None:
        key = str(run_id)
        with self._record_lock:
            if key not in self.recorded:
                self.recorded[key] = {}
                self.order.append(key)
            self.recorded[key].update({k: v for k, v in fields.items() if v is not None})

    def create_run(self, name: str, inputs: dict[str, Any], run_type: str, **kwargs: Any) -> None:
        self._record(kwargs.get("id"), {**kwargs, "name": name, "inputs": inputs, "run_type": run_type})

    def update_run(self, run_id: Any, **kwargs: Any) -> None:
        self._record(run_id, {**kwargs, "id": run_id})

    def children(self, run_id: Any) -> list[dict[str, Any]]:
        return [self.recorded[k] for k in self.order if str(self.recorded[k].get("parent_run_id")) == str(run_id)]


def langsmith_tracer(project_name: str | None = None, client: langsmith.Client | None = None) -> LangChainTracer:
    """The real LangSmith tracer; on a `RecordingClient` unless LANGSMITH_API_KEY (or LANGCHAIN_API_KEY) is set."""
    if client is None:
        has_key = os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")
        client = langsmith.Client() if has_key else RecordingClient()
    return LangChainTracer(project_name=project_name or "wim-integrations", client=client)


def trace_tree(client: RecordingClient, root: Any = None, indent: int = 0) -> str:
    """The recorded runs as an indented tree: name [run_type] tags."""
    if root is None:
        runs = [client.recorded[k] for k in client.order if client.recorded[k].get("parent_run_id") is None]
    else:
        runs = client.children(root)
    lines: list[str] = []
    for run in runs:
        tags = ",".join(sorted(run.get("tags") or []))
        lines.append(f"{'  ' * indent}{run.get('name')} [{run.get('run_type')}]{' ' + tags if tags else ''}")
        child_text = trace_tree(client, run["id"], indent + 1)
        if child_text:
            lines.append(child_text)
    return "\n".join(lines)
