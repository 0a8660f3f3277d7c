"""LlamaIndex adapter on the tiny random model: swap, async/streaming, events and spans, prompts, wiring, errors."""

from __future__ import annotations

import asyncio
import io
import math
import re
import zlib

import pytest
from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.prompts import PromptTemplate
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import QueryEngineTool
from pydantic import Field

from wim_integrations import InputDocument, WiMInputError
from wim_integrations.llamaindex import (
    WiMAnswerEvent,
    WiMAnswerStartEvent,
    WiMLLM,
    WiMMarginCollector,
    WiMMarginEvent,
    WiMProgressHandler,
    WiMQueryEngine,
    WiMSegmentReadEvent,
    WiMSynthesizer,
    reading_order,
)
from wim_integrations.llamaindex.prompt_templates import from_prompt_template, to_prompt_template


class HashEmbedding(BaseEmbedding):
    """Bag of hashed words, L2-normalised: deterministic, offline, and similar texts score higher."""

    dim: int = 64

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for w in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(w.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


TEXTS = [
    "Mary went to the kitchen. The quick brown fox jumps over the lazy dog. " * 3
    + "The secret code is 4417. Paris is the capital of France.",
    "A long document is split into segments. After each segment the model writes a margin note. " * 3,
    "Berlin is the capital of Germany. Read the text carefully, part by part. Numbers 0 1 2 3 4 5 6 7 8 9. " * 3,
]


QUESTION = "What is the secret code?"


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(
        docs, embed_model=HashEmbedding(), transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0)]
    )


@pytest.fixture
def root_handlers():
    """Record every event and span on the root dispatcher; removed afterwards."""

    class Recorder(BaseEventHandler):
        events: list = Field(default_factory=list)

        def handle(self, event, **kwargs) -> None:
            self.events.append(event)

    root = get_dispatcher()
    rec, spans = Recorder(events=[]), SimpleSpanHandler()
    root.add_event_handler(rec)
    root.add_span_handler(spans)
    yield rec, spans
    root.event_handlers.remove(rec)
    root.span_handlers.remove(spans)


def _margins(response) -> list[tuple]:
    """What a run wrote, without timings."""
    return [(m["segment_index"], m["text"], m["verdict"], m["node_ids"]) for m in response.metadata["wim"]["margins"]]


def _retriever(index, k=4):
    return index.as_retriever(similarity_top_k=k)


def test_swap_same_pipeline_default_vs_wim(index, tiny_wim):
    default = RetrieverQueryEngine(_retriever(index), response_synthesizer=get_response_synthesizer(llm=MockLLM()))
    wim_engine = RetrieverQueryEngine(_retriever(index), response_synthesizer=WiMSynthesizer(tiny_wim))
    a, b = default.query(QUESTION), wim_engine.query(QUESTION)
    assert isinstance(b, Response) and b.response
    ids = [n.node.node_id for n in a.source_nodes]
    assert [n.node.node_id for n in b.source_nodes] == ids  # same retrieval, only the reader changed
    margins = b.metadata["wim"]["margins"]
    assert len(margins) == b.metadata["wim"]["result"]["n_segments"] >= 1
    linked = {i for m in margins for i in m["node_ids"]}
    assert linked == set(ids)  # every node was read, every margin names real nodes
    for node_id in ids:  # LlamaIndex's node-metadata entries are kept
        assert node_id in b.metadata

    # The adapter reads exactly the nodes in document order; a direct core run on that context agrees.
    ordered = reading_order(b.source_nodes)
    docs = [InputDocument(n.node.get_content(metadata_mode="llm"), id=n.node.node_id) for n in ordered]
    direct = tiny_wim.run(docs, QUESTION)
    assert b.response == direct.answer
    assert [m["text"] for m in margins] == [m.text for m in direct.margins]


def test_as_query_engine_with_wim_llm_never_needs_openai(index, tiny_wim):
    engine = index.as_query_engine(
        llm=WiMLLM(tiny_wim, max_tokens=8), response_synthesizer=WiMSynthesizer(tiny_wim), similarity_top_k=2
    )
    r = engine.query(QUESTION)
    assert len(r.source_nodes) == 2 and r.metadata["wim"]["margins"]


def _nws(node_id, doc, start, score):
    return NodeWithScore(node=TextNode(id_=node_id, text=node_id, start_char_idx=start, ref_doc_id=doc), score=score)


def test_reading_order_document_and_score():
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    nodes = []
    for node_id, doc, start, score in [
        ("b2", "B", 50, 0.9),
        ("a1", "A", 0, 0.8),
        ("b1", "B", 0, 0.7),
        ("x", None, None, 0.6),
    ]:
        n = TextNode(id_=node_id, text=node_id, start_char_idx=start)
        if doc:
            n.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
        nodes.append(NodeWithScore(node=n, score=score))
    nodes.append(nodes[0])  # a duplicate is read once
    assert [n.node.node_id for n in reading_order(nodes)] == ["b1", "b2", "a1", "x"]
    assert [n.node.node_id for n in reading_order(nodes, "score")] == ["b2", "a1", "b1", "x"]
    with pytest.raises(ValueError, match="order"):
        reading_order(nodes, "random")


def test_aquery_and_streaming_agree_with_query(index, tiny_wim):
    plain = WiMQueryEngine(_retriever(index), tiny_wim).query(QUESTION)
    a = asyncio.run(WiMQueryEngine(_retriever(index), tiny_wim).aquery(QUESTION))
    assert a.response == plain.response and _margins(a) == _margins(plain)

    s = WiMQueryEngine(_retriever(index), tiny_wim, streaming=True).query(QUESTION)
    assert isinstance(s, StreamingResponse) and s.metadata["wim"]["result"] is None  # nothing computed yet
    assert "".join(s.response_gen).strip() == plain.response
    assert _margins(s) == _margins(plain)

    async def astream():
        r = await WiMQueryEngine(_retriever(index), tiny_wim, streaming=True).aquery(QUESTION)
        assert isinstance(r, AsyncStreamingResponse)
        return "".join([t async for t in r.async_response_gen()]), r.metadata

    text, meta = asyncio.run(astream())
    assert text.strip() == plain.response and meta["wim"]["result"]["answer"] == plain.response


def _span_chain(spans: SimpleSpanHandler, span_id: str) -> list[str]:
    by_id = {s.id_: s for s in spans.completed_spans + list(spans.open_spans.values())}
    chain = []
    while span_id in by_id:
        chain.append(span_id.split("-")[0])
        span_id = by_id[span_id].parent_id
    return chain


@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
def test_events_carry_span_tree(index, tiny_wim, root_handlers, mode):
    rec, spans = root_handlers
    engine = WiMQueryEngine(_retriever(index), tiny_wim, streaming=mode == "stream")
    if mode == "async":
        r = asyncio.run(engine.aquery(QUESTION))
    else:
        r = engine.query(QUESTION)
        if mode == "stream":
            r.get_response()
    wim_events = [e for e in rec.events if type(e).__name__.startswith("WiM")]
    reads = [e for e in wim_events if isinstance(e, WiMSegmentReadEvent)]
    margins = [e for e in wim_events if isinstance(e, WiMMarginEvent)]
    n = r.metadata["wim"]["result"]["n_segments"]
    assert len(reads) == len(margins) == n
    assert [m.text for m in margins] == [m["text"] for m in r.metadata["wim"]["margins"]]
    assert [m.node_ids for m in margins] == [m["node_ids"] for m in r.metadata["wim"]["margins"]]
    query_spans = (
        ["WiMQueryEngine._aquery", "WiMQueryEngine.aquery"]
        if mode == "async"
        else ["WiMQueryEngine._query", "WiMQueryEngine.query"]
    )
    synth_span = "WiMSynthesizer.asynthesize" if mode == "async" else "WiMSynthesizer.synthesize"
    for e in reads + margins:
        assert _span_chain(spans, e.span_id)[:5] == [
            "WiMSynthesizer.wim_segment",
            "WiMSynthesizer.wim_read",
            synth_span,
            *query_spans,
        ]
    (start,) = [e for e in wim_events if isinstance(e, WiMAnswerStartEvent)]
    (done,) = [e for e in wim_events if isinstance(e, WiMAnswerEvent)]
    assert start.span_id == done.span_id
    assert _span_chain(spans, done.span_id)[:2] == ["WiMSynthesizer.wim_answer", "WiMSynthesizer.wim_read"]
    assert done.answer == r.response if mode != "stream" else done.answer == str(r).strip()
    # each margin is in its own segment span
    assert len({e.span_id for e in margins}) == n


def test_failing_handlers_never_break_a_query(index, tiny_wim, caplog):
    class Broken(BaseEventHandler):
        def handle(self, event, **kwargs) -> None:
            raise RuntimeError("handler bug")

    class BrokenSpans(SimpleSpanHandler):
        def new_span(self, *args, **kwargs):
            raise RuntimeError("span handler bug")

    class BrokenCallback(BaseCallbackHandler):
        def __init__(self):
            super().__init__([], [])
            self.starts = 0

        def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
            self.starts += event_type == CBEventType.LLM
            if self.starts == 1:  # the first start fails, later ones succeed and their ends fail
                raise RuntimeError("callback bug")
            return event_id

        def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
            if event_type == CBEventType.LLM:
                raise RuntimeError("callback bug")

        def start_trace(self, trace_id=None):
            pass

        def end_trace(self, trace_id=None, trace_map=None):
            pass

    expected = WiMQueryEngine(_retriever(index), tiny_wim).query(QUESTION).response
    root = get_dispatcher()
    broken, broken_spans = Broken(), BrokenSpans()
    root.add_event_handler(broken)
    root.add_span_handler(broken_spans)
    try:
        synth = WiMSynthesizer(tiny_wim, callback_manager=CallbackManager([BrokenCallback()]))
        for streaming in (False, True):
            synth._streaming = streaming
            r = RetrieverQueryEngine(_retriever(index), response_synthesizer=synth).query(QUESTION)
            assert (r.response if not streaming else str(r).strip()) == expected
    finally:
        root.event_handlers.remove(broken)
        root.span_handlers.remove(broken_spans)
    assert "failed on LLM start" in caplog.text and "failed on LLM end" in caplog.text


def test_legacy_callback_manager_gets_margins_as_llm_events(index, tiny_wim):
    debug = LlamaDebugHandler()
    synth = WiMSynthesizer(tiny_wim, callback_manager=CallbackManager([debug]))
    r = RetrieverQueryEngine(_retriever(index), response_synthesizer=synth).query(QUESTION)
    pairs = debug.get_llm_inputs_outputs()
    margins = r.metadata["wim"]["margins"]
    assert len(pairs) == len(margins) + 1  # one per margin, then the answer
    assert [p[1].payload[EventPayload.COMPLETION] for p in pairs[:-1]] == [m["text"] for m in margins]
    assert pairs[-1][1].payload[EventPayload.COMPLETION] == r.response
    assert all(p[0].payload[EventPayload.PROMPT] for p in pairs[:-1])  # the segment text
    assert debug.get_event_pairs(CBEventType.SYNTHESIZE)


def test_prompts_round_trip_and_take_effect(index, tiny_wim):
    engine = WiMQueryEngine(_retriever(index), tiny_wim)
    prompts = engine.get_prompts()
    assert set(prompts) >= {"response_synthesizer:margin_instruction", "response_synthesizer:final_answer"}
    final = prompts["response_synthesizer:final_answer"]
    assert set(final.template_vars) == {"margins", "question"}
    assert from_prompt_template("final_answer", final) == tiny_wim.prompts.final_answer  # lossless both ways
    before = engine.query(QUESTION).metadata["wim"]["result"]["tokens"]["prompt"]

    new = 'Notes on {question}; keep {"literal": braces} as text. ' * 3
    # The instruction in use: margins about the part just read (margin_scope="segment", the default).
    engine.update_prompts({"response_synthesizer:margin_instruction_segment": PromptTemplate(new)})
    core = engine.synthesizer.wim.prompts.margin_instruction_segment
    assert core.startswith('Notes on {{question}}; keep {"literal": braces} as text.')
    assert engine.get_prompts()["response_synthesizer:margin_instruction_segment"].template == new
    after = engine.query(QUESTION).metadata["wim"]["result"]["tokens"]["prompt"]
    assert after != before  # the longer instruction is what the model was given
    assert tiny_wim.prompts.margin_instruction_segment != core  # the shared WiM is untouched

    with pytest.raises(WiMInputError, match=r"\{answer\}"):
        engine.update_prompts({"response_synthesizer:final_answer": PromptTemplate("{answer} {question}")})
    assert to_prompt_template('a {"x": 1} {{ y }}').format(y="Y") == 'a {"x": 1} Y'
    assert from_prompt_template("margin_instruction", '{"q": 1} {question}') == '{"q": 1} {{question}}'


def test_tool_and_chat_engine_wiring(index, tiny_wim):
    from llama_index.core.chat_engine import CondenseQuestionChatEngine

    engine = WiMQueryEngine(_retriever(index, 2), tiny_wim)
    expected = engine.query(QUESTION).response
    tool = QueryEngineTool.from_defaults(engine, name="docs", description="Reads the documents with WiM.")
    assert tool.call(QUESTION).content == expected

    llm = WiMLLM(tiny_wim, max_tokens=6)
    chat = CondenseQuestionChatEngine.from_defaults(query_engine=engine, llm=llm)
    first = chat.chat(QUESTION)
    assert str(first) == expected  # no history: the question goes through unchanged
    second = chat.chat("And the capital of France?")  # condensed by WiMLLM, then read by WiM
    assert second.source_nodes and second.sources[0].raw_output.metadata["wim"]["margins"]


class _Nothing(BaseRetriever):
    def _retrieve(self, query_bundle):
        return []


def test_empty_retrieval_and_bad_inputs(index, tiny_wim):
    r = WiMQueryEngine(_Nothing(), tiny_wim).query(QUESTION)
    assert r.response == "Empty Response" and r.metadata["wim"]["margins"] == []
    s = WiMQueryEngine(_Nothing(), tiny_wim, streaming=True).query(QUESTION)
    assert "".join(s.response_gen) == "Empty Response"

    engine = WiMQueryEngine(_retriever(index), tiny_wim)
    with pytest.raises(WiMInputError, match="question is empty"):
        engine.synthesizer.synthesize("   ", [_nws("n", "d", 0, 1.0)])
    with pytest.raises(ValueError, match="margin_max_new_tokenz"):
        WiMSynthesizer(tiny_wim, margin_max_new_tokenz=3)
    with pytest.raises(ValueError, match="order"):
        WiMSynthesizer(tiny_wim, order="best")
    with pytest.raises(WiMInputError, match="either"):
        WiMQueryEngine(_Nothing(), tiny_wim, response_synthesizer=WiMSynthesizer(tiny_wim))
    with pytest.raises(WiMInputError, match="no documents"):
        WiMQueryEngine.from_documents([], tiny_wim)


def test_from_documents_reads_whole_documents_in_order(tiny_wim):
    docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(TEXTS)]
    r = WiMQueryEngine.from_documents(docs, tiny_wim, classification="none").query(QUESTION)
    assert [n.node.node_id for n in r.source_nodes] == ["d0", "d1", "d2"]
    seen = [i for m in r.metadata["wim"]["margins"] for i in m["node_ids"]]
    assert sorted(set(seen), key=seen.index) == ["d0", "d1", "d2"]
    assert all(m["verdict"] == "unclassified" for m in r.metadata["wim"]["margins"])  # config override applied
    assert WiMQueryEngine.from_documents(TEXTS[:1], tiny_wim).query(QUESTION).response is not None


def test_wim_llm_complete_stream_chat(tiny_wim):
    llm = WiMLLM(tiny_wim, max_tokens=6)
    assert llm.metadata.model_name == tiny_wim.model_name and llm.metadata.num_output == 6
    text = llm.complete("Where is Mary?").text
    assert "".join(c.delta for c in llm.stream_complete("Where is Mary?")).strip() == text
    reply = llm.chat([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")])
    assert reply.message.role == "assistant" and isinstance(reply.message.content, str)
    assert asyncio.run(llm.acomplete("Where is Mary?")).text == text
    with pytest.raises(ValueError, match="exceeds"):
        llm.complete("word " * 5000)
    with pytest.raises(WiMInputError, match="no messages"):
        llm.chat([])


def test_progress_and_collector_handlers(index, tiny_wim):
    out = io.StringIO()
    progress, collected = WiMProgressHandler(stream=out), []
    collector = WiMMarginCollector(on_margin=collected.append)
    root = get_dispatcher()
    root.add_event_handler(progress)
    root.add_event_handler(collector)
    try:
        r = WiMQueryEngine(_retriever(index), tiny_wim).query(QUESTION)
    finally:
        root.event_handlers.remove(progress)
        root.event_handlers.remove(collector)
    n = r.metadata["wim"]["result"]["n_segments"]
    printed = out.getvalue()
    lines = printed.splitlines()  # tqdm redraws its bar with \r: each frame is a line here
    assert f"{n}/{n} segments read" in printed and "read segment 1 (" in printed
    assert sum(line.startswith("  margin ") for line in lines) == n
    assert lines[-1].startswith("Done in")
    assert (
        [m.text for m in collector.margins]
        == [m["text"] for m in r.metadata["wim"]["margins"]]
        == [m.text for m in collected]
    )
    assert collector.answers[-1].answer == r.response
    assert set(collector.by_node()) <= {n.node.node_id for n in r.source_nodes}


def test_abandoned_stream_drops_its_spans(index, tiny_wim, root_handlers):
    _, spans = root_handlers
    r = WiMQueryEngine(_retriever(index), tiny_wim, streaming=True).query(QUESTION)
    gen = r.response_gen
    next(gen)
    gen.close()  # the reader stops: the run is cancelled, open WiM spans are dropped, nothing raises
    assert not [s for s in spans.open_spans if s.startswith("WiMSynthesizer.wim")]
    dropped = [s for s in spans.dropped_spans if s.id_.startswith("WiMSynthesizer.wim")]
    assert {s.id_.split("-")[0] for s in dropped} == {"WiMSynthesizer.wim_read", "WiMSynthesizer.wim_answer"}


def test_get_response_on_text_chunks_matches_core(tiny_wim):
    import wim_integrations

    assert wim_integrations.WiMSynthesizer is WiMSynthesizer  # the lazy top-level names map here
    chunks = TEXTS[:2]
    expected = tiny_wim.run(chunks, QUESTION).answer
    synth = WiMSynthesizer(llm=WiMLLM(tiny_wim))  # the WiM comes from the WiMLLM
    assert synth.wim is tiny_wim
    assert synth.get_response(QUESTION, chunks) == expected
    assert asyncio.run(synth.aget_response(QUESTION, chunks)) == expected
    synth._streaming = True
    assert "".join(synth.get_response(QUESTION, chunks)).strip() == expected


def test_own_prompts_keep_the_shared_document_cache(index, tiny_wim):
    # Prompts given to a synthesizer (at construction or through update_prompts) change the prompts only: the
    # WiM's document cache stays the shared one, so nodes already read are a cache hit.
    wim = tiny_wim.with_options(document_cache="auto")
    assert wim.document_cache is not None
    nodes = _retriever(index, 2).retrieve(QUESTION)
    custom = wim.prompts.with_overrides(margin_instruction_segment="Notes on {{question}}.")
    synth = WiMSynthesizer(wim, prompts=custom)
    assert synth.wim.prompts == custom and synth.wim.document_cache is wim.document_cache
    synth.synthesize(QUESTION, nodes)
    synth.update_prompts({"final_answer": PromptTemplate("Answer briefly. {margins}\n{question}")})
    assert synth.wim.document_cache is wim.document_cache
    second = synth.synthesize(QUESTION, nodes).metadata["wim"]["result"]
    assert second["timings"]["context_cache"] == "hit"


def test_a_segment_read_but_not_annotated_closes_empty(tiny_wim):
    # answer_now() right after the second segment is read: its step closes with an empty completion, then the answer.
    from wim_integrations.llamaindex.tracing import RunTracer

    debug = LlamaDebugHandler()
    tracer = RunTracer(get_dispatcher("test"), object(), None, CallbackManager([debug]), QUESTION, {})
    stream = tiny_wim.stream(TEXTS, QUESTION)
    tracer.start(len(TEXTS))
    for ev in stream:
        tracer.on_event(ev)
        if ev.type == "segment_read" and ev.segment_index == 1:
            stream.answer_now()
    completions = [end.payload[EventPayload.COMPLETION] for _, end in debug.get_event_pairs(CBEventType.LLM)]
    assert completions == [stream.result.margins[0].text, "", stream.result.answer]
    assert tracer.run_id is None  # the run's span is closed
