"""LlamaIndex summary path on the tiny random model: the synthesizer, a SummaryIndex swap and the query engine."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, SummaryIndex
from llama_index.core.base.response.schema import Response
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import BaseModel, Field

from wim_integrations import InputDocument, WiMInputError
from wim_integrations.llamaindex import WiMLLM, WiMSummarySynthesizer, summary_query_engine

TEXTS = {
    "a": "Mary went to the kitchen. The quick brown fox jumps over the lazy dog. " * 6,
    "b": "The secret code is 4417. Paris is the capital of France. " * 6,
}


class Code(BaseModel):
    code: str


def _nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=k, text=v), score=None) for k, v in TEXTS.items()]


def _docs() -> list[InputDocument]:
    return [InputDocument(v, id=k) for k, v in TEXTS.items()]


def test_synthesizer_gives_the_engine_summary_with_notes_in_metadata(tiny_wim):
    synth = WiMSummarySynthesizer(tiny_wim)
    response = synth.synthesize("Summarise the notes.", _nodes())
    expected = tiny_wim.summarize(_docs(), "Summarise the notes.")
    assert isinstance(response, Response) and response.response == expected.summary
    meta = response.metadata
    assert meta["wim"]["result"]["instruction"] == "Summarise the notes." and meta["wim"]["result"]["question"] == ""
    assert [m["text"] for m in meta["wim"]["margins"]] == [n.text for n in expected.notes]
    assert {i for m in meta["wim"]["margins"] for i in m["node_ids"]} == {"a", "b"}
    # an empty query gets the default summary
    assert synth.synthesize("", _nodes()).response == tiny_wim.summarize(_docs()).summary
    again = asyncio.run(synth.asynthesize("Summarise the notes.", _nodes()))
    assert again.response == expected.summary


def test_analysis_mode_writes_notes_under_the_query(tiny_wim):
    synth = WiMSummarySynthesizer(tiny_wim, analysis=True)
    expected = tiny_wim.analyze(_docs(), "List the codes.")
    assert synth.synthesize("List the codes.", _nodes()).response == expected.summary


def test_summary_index_swap_and_query_engine(tiny_wim):
    docs = [Document(text=v, id_=k) for k, v in TEXTS.items()]
    index = SummaryIndex.from_documents(docs)
    engine = index.as_query_engine(llm=WiMLLM(tiny_wim), response_synthesizer=WiMSummarySynthesizer(tiny_wim))
    response = engine.query("Summarise.")
    assert response.response and len(response.source_nodes) == len(index.docstore.docs)
    assert response.metadata["wim"]["result"]["instruction"] == "Summarise."
    whole = summary_query_engine(docs, tiny_wim).query("Summarise.")
    assert whole.response == tiny_wim.summarize(_docs(), "Summarise.").summary
    assert summary_query_engine(index, tiny_wim).query("Summarise.").response == response.response


def test_bad_settings_fail_at_construction_and_queries_before_compute(tiny_wim):
    with pytest.raises(WiMInputError, match="pydantic model class"):
        WiMSummarySynthesizer(tiny_wim, schema={"code": str})
    with pytest.raises(WiMInputError, match="note_instruction is empty"):
        WiMSummarySynthesizer(tiny_wim, note_instruction="  ")
    with pytest.raises(WiMInputError, match="instruction is empty"):
        WiMSummarySynthesizer(tiny_wim, analysis=True).synthesize(" ", _nodes())
    with pytest.raises(WiMInputError, match="too small for notes"):
        WiMSummarySynthesizer(tiny_wim, analysis=True, schema=Code).synthesize("List codes.", _nodes())


def test_answer_start_event_and_legacy_prompt_are_the_summary_prompt_the_model_read(tiny_wim):
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    from wim_integrations import Analysis
    from wim_integrations.llamaindex import WiMAnswerStartEvent

    class Starts(BaseEventHandler):
        seen: list = Field(default_factory=list)

        def handle(self, event, **kwargs) -> None:
            if isinstance(event, WiMAnswerStartEvent):
                self.seen.append(event)

    starts, debug = Starts(seen=[]), LlamaDebugHandler()
    root = get_dispatcher()
    root.add_event_handler(starts)
    try:
        synth = WiMSummarySynthesizer(tiny_wim, callback_manager=CallbackManager([debug]))
        synth.synthesize("Summarise the notes.", _nodes())
    finally:
        root.event_handlers.remove(starts)
    expected = tiny_wim.summarize(_docs(), "Summarise the notes.")
    read = tiny_wim.final_prompt_ids(Analysis.summary("Summarise the notes."), expected.notes, expected.n_segments)
    [start] = starts.seen
    assert start.prompt == tiny_wim.backend.decode(read) and start.prompt_tokens == len(read)
    answer_start = debug.get_event_pairs(CBEventType.LLM)[-1][0]
    assert answer_start.payload[EventPayload.PROMPT] == start.prompt
