"""wim_node in a LangGraph graph (tiny random Llama): margins on stream_mode="custom", answer and margins in state."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any

import pytest
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from tests.test_langchain import DOCS, QUESTION
from wim_integrations import InputDocument, WiMInputError
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
    assert [m.text for m in update["read"]["margins"]] == [m.text for m in reference.margins]
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
