"""LangGraph: run WiM in a graph node and forward its events to ``stream_mode="custom"``.

    pip install 'wim-integrations[langgraph]'

    graph.add_node("read", wim_node(WiMChain.default()))
    for mode, chunk in graph.stream(state, stream_mode=["custom", "updates"]):
        if mode == "custom" and chunk["event"] == "wim_margin_written":
            print(chunk["data"]["margin"]["text"])

The node reads the question and context from the state, writes each WiM event through LangGraph's stream writer
as ``{"event": "wim_<type>", "data": <payload>}`` (the payloads of docs/events.md) and returns the answer and the
margins as a state update. The margins are plain JSON-ready dicts (``Margin.model_dump(mode="json")``;
``Margin.model_validate(d)`` gives the object back), so a checkpointer stores and restores them without registering
types. It runs `WiMChain` with the node's config, so tracing and callbacks see the usual WiMChain run with its
margin/answer child runs; the answer run is then a chat-model run, so ``stream_mode="messages"`` gets the answer's
tokens as `AIMessageChunk`s of this node.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import RunnableConfig, RunnableLambda

from ..engine import WiM
from ..errors import WiMInputError
from .chain import WiMChain
from .events import EVENT_NAMES, with_handler

try:
    from langgraph.config import get_stream_writer
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"wim_integrations.langgraph needs langgraph: pip install 'wim-integrations[langgraph]' ({exc.name} is missing)"
    ) from exc


class _StreamWriterHandler(BaseCallbackHandler):
    """Forwards WiM custom events to a LangGraph stream writer."""

    run_inline = True  # in order, on the caller's thread / loop

    def __init__(self, writer: Callable[[Any], None], events: Collection[str]) -> None:
        self.writer, self.events = writer, events

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name in self.events:
            self.writer({"event": name, "data": data})


def wim_node(
    reader: WiMChain | WiM,
    *,
    question_key: str = "question",
    context_key: str = "context",
    answer_key: str = "answer",
    margins_key: str | None = "margins",
    events: Collection[str] = EVENT_NAMES,
    name: str = "wim",
) -> RunnableLambda:
    """A graph node (sync and async) running `reader` on ``state[question_key]`` over ``state[context_key]``.

    Returns ``{answer_key: answer, margins_key: [margin dict, ...]}`` (no margins key when `margins_key` is None);
    each margin dict is a `Margin` dumped to JSON-ready data.
    `events` picks which WiM events go to the custom stream (default: all; e.g. ``{"wim_margin_written"}``).
    """
    chain = (reader if isinstance(reader, WiMChain) else WiMChain(wim=reader)).with_margins()
    unknown = sorted(set(events) - set(EVENT_NAMES))
    if unknown:
        raise WiMInputError(f"wim_node: unknown events {unknown}; valid: {list(EVENT_NAMES)}.")
    wanted = set(events)

    def prepare(state: dict[str, Any], config: RunnableConfig) -> tuple[dict[str, Any], RunnableConfig]:
        missing = [k for k in (question_key, context_key) if k not in state]
        if missing:
            raise WiMInputError(
                f"wim_node: the state has no {missing} (keys: {sorted(state)}); add them to the graph state or pass "
                "question_key=/context_key= naming the keys that hold the question and the context."
            )
        try:
            writer = get_stream_writer()
        except (KeyError, RuntimeError) as exc:  # no graph run around this call
            raise WiMInputError(
                f"wim_node {name!r} runs as a node of a LangGraph graph (graph.add_node(...), then graph.invoke); "
                "outside a graph, call the reader itself: WiMChain.invoke({'question': ..., 'context': ...})."
            ) from exc
        handler = _StreamWriterHandler(writer, wanted)
        return {"question": state[question_key], "context": state[context_key]}, with_handler(config, handler)

    def update(out: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {answer_key: out["answer"]}
        if margins_key is not None:
            result[margins_key] = [m.model_dump(mode="json") for m in out["margins"]]  # checkpoint-safe data
        return result

    def read(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return update(chain.invoke(*prepare(state, config)))

    async def aread(state: dict[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return update(await chain.ainvoke(*prepare(state, config)))

    return RunnableLambda(read, afunc=aread, name=name)
