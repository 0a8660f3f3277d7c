"""wim_node in a LangGraph graph (tiny random Llama): margins on stream_mode="custom", answer and margins in state."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any

import pytest
from langchain_core.messages import AIMessageChunk
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from test_langchain import DOCS, QUESTION
from typing_extensions import TypedDict

from wim_integrations import InputDocument, Margin, WiMInputError
from wim_integrations.langgraph import wim_node


class State(TypedDict, total=False):
    question: str
    context: Any
    answer: str
    margins: list
    log: Annotated[list, operator.add]


@pytest.fixture(scope="module")
def reference(tiny_wim):
    return tiny_wim.run([InputDocument(d.page_content, d.id, d.metadata) for d in DOCS], QUESTION)


def _graph(node):
    g = StateGraph(State)
    g.add_node("retrieve", lambda s: {"context": DOCS, "log": ["retrieved"]})
    g.add_node("read", node)
    g.add_edge(START, "retrieve")
    g.add_edge("retrieve", "read")
    g.add_edge("read", END)
    return g.compile()


def _check(chunks, reference, wanted=None):
    custom = [c for mode, c in chunks if mode == "custom"]
    names = [c["event"] for c in custom]
    if wanted is None:
        assert names.count("wim_margin_written") == reference.n_segments and names[-1] == "wim_finished"
    else:
        assert set(names) == wanted
    margins = [c["data"]["margin"]["text"] for c in custom if c["event"] == "wim_margin_written"]
    assert margins == [m.text for m in reference.margins]
    updates = [c for mode, c in chunks if mode == "updates" and "read" in c]
    [update] = updates
    assert update["read"]["answer"] == reference.answer
    assert [m["text"] for m in update["read"]["margins"]] == [m.text for m in reference.margins]
    # margins arrive before the node's state update
    first_margin = next(i for i, (mode, c) in enumerate(chunks) if mode == "custom")
    assert first_margin < chunks.index(("updates", update))


def test_sync_stream_custom_mode(tiny_wim, reference):
    graph = _graph(wim_node(tiny_wim))
    _check(list(graph.stream({"question": QUESTION}, stream_mode=["custom", "updates"])), reference)
    final = graph.invoke({"question": QUESTION})
    assert final["answer"] == reference.answer and final["log"] == ["retrieved"]


def test_async_stream_with_a_chosen_event(tiny_wim, reference):
    graph = _graph(wim_node(tiny_wim, events={"wim_margin_written"}))

    async def collect():
        return [c async for c in graph.astream({"question": QUESTION}, stream_mode=["custom", "updates"])]

    _check(asyncio.run(collect()), reference, wanted={"wim_margin_written"})


def test_clear_errors(tiny_wim):
    with pytest.raises(WiMInputError, match="unknown events"):
        wim_node(tiny_wim, events={"margin"})
    g = StateGraph(State)
    g.add_node("read", wim_node(tiny_wim, context_key="documents"))
    g.add_edge(START, "read")
    with pytest.raises(WiMInputError, match=r"the state has no \['documents'\]"):
        g.compile().invoke({"question": QUESTION, "context": DOCS})


def test_answer_tokens_on_the_messages_stream(tiny_wim, reference):
    graph = _graph(wim_node(tiny_wim))
    chunks = list(graph.stream({"question": QUESTION}, stream_mode="messages"))
    assert chunks, "stream_mode='messages' got nothing from wim_node"
    assert all(meta["langgraph_node"] == "read" for _, meta in chunks)
    assert all(isinstance(message, AIMessageChunk) for message, _ in chunks)  # no full message repeated at the end
    assert len({message.id for message, _ in chunks}) == 1  # one message, in pieces
    assert "".join(message.content for message, _ in chunks).strip() == reference.answer

    async def collect():
        return [c async for c in graph.astream({"question": QUESTION}, stream_mode="messages")]

    assert "".join(m.content for m, _ in asyncio.run(collect())).strip() == reference.answer


def test_margins_in_state_survive_a_checkpoint_without_unregistered_types(tiny_wim, reference):
    events: list = []
    unregister = register_serde_event_listener(events.append)
    try:
        g = StateGraph(State)
        g.add_node("read", wim_node(tiny_wim))
        g.add_edge(START, "read")
        g.add_edge("read", END)
        # a strict serializer: only types LangGraph knows are safe come back from a checkpoint
        graph = g.compile(checkpointer=InMemorySaver(serde=JsonPlusSerializer(allowed_msgpack_modules=None)))
        config = {"configurable": {"thread_id": "t1"}}
        out = graph.invoke({"question": QUESTION, "context": [d.page_content for d in DOCS]}, config)
        restored = graph.get_state(config).values
    finally:
        unregister()
    assert restored["margins"] == out["margins"] and restored["answer"] == out["answer"] == reference.answer
    assert all(isinstance(m, dict) for m in restored["margins"])
    assert [Margin.model_validate(m).text for m in restored["margins"]] == [m.text for m in reference.margins]
    assert not [e for e in events if e.get("kind", "").startswith("msgpack_unregistered")], events
