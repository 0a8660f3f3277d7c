"""Contract tests of the LangChain adapter on the tiny random Llama (structure and behaviour, not wording)."""

from __future__ import annotations

import asyncio
import json
import logging

import langsmith
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate
from langchain_core.runnables import ConfigurableField, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from wim_integrations import WiM, WiMInputError, WiMResult
from wim_integrations.langchain import (
    ANSWER_RUN,
    CLASSIFY_RUN,
    EVENT_NAMES,
    MARGIN_RUN,
    ConsoleProgressHandler,
    RecordingClient,
    WiMCallbackHandler,
    WiMChain,
    langsmith_tracer,
    parse_event,
    trace_tree,
)

DOCS = [
    Document(
        page_content="Mary went to the kitchen. The quick brown fox jumps over the lazy dog. " * 6,
        id="d1",
        metadata={"source": "a.txt"},
    ),
    Document(
        page_content="The secret code is 4417. Paris is the capital of France. " * 6,
        id="d2",
        metadata={"source": "b.txt"},
    ),
    Document(
        page_content="Read the text carefully, part by part; then answer the question. " * 6,
        id="d3",
        metadata={"source": "c.txt"},
    ),
]
QUESTION = "What is the secret code?"


def stable(result: WiMResult) -> dict:
    """A result without its wall-clock fields."""
    seconds = {"__all__": {"seconds"}}
    return result.model_dump(exclude={"timings": True, "margins": seconds, "segments": seconds})


def stable_margin(margin) -> dict:
    return margin.model_dump(exclude={"seconds"})


class Recorder(BaseCallbackHandler):
    """Keeps every custom event and chain start, with run ids."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict, object]] = []
        self.chain_runs: dict[object, str] = {}

    def on_custom_event(self, name, data, *, run_id, **kwargs):
        self.events.append((name, data, run_id))

    def on_chain_start(self, serialized, inputs, *, run_id, **kwargs):
        self.chain_runs[run_id] = kwargs.get("name") or ""

    def names(self) -> list[str]:
        return [n for n, _, _ in self.events]


@pytest.fixture(scope="module")
def chain(tiny_wim: WiM) -> WiMChain:
    return WiMChain(wim=tiny_wim)


@pytest.fixture(scope="module")
def reference(tiny_wim: WiM) -> WiMResult:
    """The engine's own result for (DOCS, QUESTION): what every chain method must reproduce."""
    from wim_integrations import InputDocument

    docs = [InputDocument(d.page_content, d.id, d.metadata) for d in DOCS]
    result = tiny_wim.run(docs, QUESTION)
    assert result.n_segments >= 3 and result.answer, "fixture must give several segments and a non-empty answer"
    return result


# -- invoke, inputs, outputs ---------------------------------------------------------------------------------
def test_invoke_returns_the_engine_answer(chain, reference):
    assert chain.invoke({"question": QUESTION, "context": DOCS}) == reference.answer


def test_with_margins_returns_result_with_source_metadata(chain, reference):
    out = chain.with_margins().invoke({"question": QUESTION, "context": DOCS})
    assert set(out) == {"question", "answer", "margins", "result"}
    result = out["result"]
    assert isinstance(result, WiMResult)
    assert (out["question"], out["answer"], out["margins"]) == (QUESTION, result.answer, result.margins)
    assert stable(result) == stable(reference)
    sources = {d.metadata["source"] for m in result.margins for d in m.documents}
    assert sources == {"a.txt", "b.txt", "c.txt"}
    assert {d.doc_id for m in result.margins for d in m.documents} == {"d1", "d2", "d3"}
    again = WiMChain(wim=chain.wim, return_margins=True).invoke({"question": QUESTION, "context": DOCS})
    assert stable(again["result"]) == stable(result)


def test_batched_margins_and_a_document_cache_give_the_engine_result(tiny_wim, reference):
    from wim_integrations import DocumentCache

    cached = WiMChain(wim=WiM(tiny_wim.backend, config=tiny_wim.config, document_cache=DocumentCache()))
    batched = cached.model_copy(update={"margin_batch_size": 3, "return_margins": True})
    first = batched.invoke({"question": QUESTION, "context": DOCS})["result"]
    second = batched.invoke({"question": QUESTION, "context": DOCS})["result"]
    assert (first.timings.context_cache, second.timings.context_cache) == ("miss", "hit")
    assert stable(first)["margins"] == stable(second)["margins"] == stable(reference)["margins"]
    assert first.answer == second.answer == reference.answer
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        WiMChain(wim=tiny_wim, margin_batch_size=0)


@pytest.mark.parametrize("key", ["input", "query"])
def test_question_aliases(chain, reference, key):
    assert chain.invoke({key: QUESTION, "context": DOCS}) == reference.answer


def test_plain_string_with_bound_context(chain, reference):
    bound = chain.with_context(DOCS)
    assert bound.invoke(QUESTION) == reference.answer
    assert WiMChain(wim=chain.wim, context=DOCS).invoke({"question": QUESTION}) == reference.answer


def test_schemas(chain):
    schema = chain.get_input_jsonschema()
    assert set(schema["properties"]) == {"question", "context"} and set(schema["required"]) == {"question", "context"}
    bound = chain.with_context(DOCS).get_input_jsonschema()
    assert set(bound["properties"]) == {"question"} and bound["required"] == ["question"]
    assert chain.get_output_jsonschema()["type"] == "string"
    out = chain.with_margins().get_output_jsonschema()
    assert set(out["$defs"]["WiMChainOutput"]["properties"]) == {"question", "answer", "margins", "result"}


BAD_INPUTS = [
    ({"context": DOCS}, "no question"),
    ({"question": QUESTION}, "no context"),
    (QUESTION, "no context"),
    ({"question": "   ", "context": DOCS}, "question is empty"),
    (42, "must be a dict"),
    ({"question": QUESTION, "context": "Mary went to the kitchen. " * 1500}, "context window"),
    ({"question": QUESTION, "context": DOCS, "margin": 1}, r"unknown WiMChain input key \['margin'\]"),
    ({"question": QUESTION, "context": DOCS}, None),
]


@pytest.mark.parametrize(("value", "message"), BAD_INPUTS)
def test_bad_inputs_raise_clear_errors_everywhere(chain, value, message):
    if message is None:
        assert isinstance(chain.invoke(value), str)
        return
    rec = Recorder()
    cfg = {"callbacks": [rec]}
    with pytest.raises(WiMInputError, match=message):
        chain.invoke(value, cfg)
    with pytest.raises(WiMInputError, match=message):
        asyncio.run(chain.ainvoke(value, cfg))
    with pytest.raises(WiMInputError, match=message):
        list(chain.stream(value, cfg))

    async def consume():
        return [c async for c in chain.astream(value, cfg)]

    with pytest.raises(WiMInputError, match=message):
        asyncio.run(consume())
    assert rec.events == []  # failed before any compute


def test_bad_setting_is_rejected_before_compute(chain):
    with pytest.raises(WiMInputError, match="segment_tokens"):
        WiMChain(wim=chain.wim, segment_tokens=4).invoke({"question": QUESTION, "context": DOCS})


# -- streaming -----------------------------------------------------------------------------------------------
def _interleaving(rec: Recorder, order: list, chunk: str) -> None:
    order.append(("chunk", chunk, len(rec.events)))


def test_stream_is_incremental_and_matches_invoke(chain, reference):
    rec, order = Recorder(), []
    for chunk in chain.stream({"question": QUESTION, "context": DOCS}, {"callbacks": [rec]}):
        _interleaving(rec, order, chunk)
    assert "".join(c for _, c, _ in order).strip() == reference.answer
    assert len(order) > 1
    # the first chunk arrived while the answer was still being written (before the `wim_finished` event)
    assert order[0][2] < rec.names().index("wim_finished")


def test_astream_is_incremental_and_matches_invoke(chain, reference):
    rec, order = Recorder(), []

    async def consume():
        async for chunk in chain.astream({"question": QUESTION, "context": DOCS}, {"callbacks": [rec]}):
            _interleaving(rec, order, chunk)

    asyncio.run(consume())
    assert "".join(c for _, c, _ in order).strip() == reference.answer
    assert len(order) > 1 and order[0][2] < rec.names().index("wim_finished")


def test_stream_with_margins_streams_answer_pieces_that_add_up(chain, reference):
    chunks = list(chain.with_margins().stream({"question": QUESTION, "context": DOCS}))
    assert len(chunks) > 2 and all(set(c) == {"answer"} for c in chunks[:-1])
    assert set(chunks[-1]) == {"question", "margins", "result"}
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total["answer"].strip() == reference.answer and stable(total["result"]) == stable(reference)
    picked = list(chain.with_margins().pick("answer").stream({"question": QUESTION, "context": DOCS}))
    assert "".join(p for p in picked if p).strip() == reference.answer


def test_transform_merges_dict_pieces(chain, reference):
    pieces = iter([{"question": QUESTION}, {"context": DOCS}])
    assert "".join(chain.transform(pieces)).strip() == reference.answer

    async def gen():
        yield {"context": DOCS}
        yield {"question": QUESTION}

    async def consume():
        return "".join([c async for c in chain.atransform(gen())])

    assert asyncio.run(consume()).strip() == reference.answer


def test_stream_stopped_early_closes_runs(chain):
    client = RecordingClient()
    tracer = langsmith_tracer(client=client)
    it = chain.stream({"question": QUESTION, "context": DOCS}, {"callbacks": [tracer]})
    next(it)
    it.close()
    tracer.wait_for_futures()
    answer_runs = [r for r in client.recorded.values() if r.get("name") == ANSWER_RUN]
    assert len(answer_runs) == 1 and answer_runs[0].get("end_time") is not None and answer_runs[0].get("error")


# -- batch and concurrency -----------------------------------------------------------------------------------
def test_batch_and_abatch_match_individual_runs(chain):
    inputs = [{"question": q, "context": DOCS[i:]} for i, q in enumerate([QUESTION, "Who went to the kitchen?"])]
    inputs.append({"question": "Where is Mary?", "context": DOCS[0].page_content})
    expected = [chain.invoke(x) for x in inputs]
    rec = Recorder()
    assert chain.batch(inputs, {"callbacks": [rec], "max_concurrency": 3}) == expected
    assert asyncio.run(chain.abatch(inputs, {"max_concurrency": 3})) == expected
    # events from the worker threads carry their own run's id: one wim_finished per run, answers match
    finished = {run_id: data["result"]["answer"] for name, data, run_id in rec.events if name == "wim_finished"}
    assert sorted(finished.values()) == sorted(expected)
    assert set(finished) <= set(rec.chain_runs)


# -- configuration -------------------------------------------------------------------------------------------
def test_configurable_fields_take_effect(chain):
    configurable = chain.with_margins().configurable_fields(
        margin_max_new_tokens=ConfigurableField(id="margin_max_new_tokens"),
        classification=ConfigurableField(id="classification"),
        segment_tokens=ConfigurableField(id="segment_tokens"),
    )
    x = {"question": QUESTION, "context": " ".join(d.page_content for d in DOCS * 2)}
    base = configurable.invoke(x)["result"]
    assert max(m.n_tokens for m in base.margins) > 1
    small = configurable.with_config(
        configurable={"margin_max_new_tokens": 1, "classification": "none", "segment_tokens": 120}
    ).invoke(x)["result"]
    assert all(m.n_tokens <= 1 for m in small.margins)
    assert {m.verdict for m in small.margins} == {"unclassified"}
    assert small.n_segments > base.n_segments


def test_chains_share_one_engine(chain, tiny_wim, monkeypatch):
    assert chain.with_margins().wim is tiny_wim and chain.with_context(DOCS).wim is tiny_wim
    calls = []
    monkeypatch.setattr(WiM, "default", classmethod(lambda cls, **kw: calls.append(kw) or tiny_wim))
    a, b = WiMChain.default(), WiMChain.default(return_margins=True, margin_max_new_tokens=3)
    # the chain asks the core for its process-wide default engine every time; it keeps no copy of its own
    assert a.wim is b.wim is tiny_wim and calls == [{}, {}]
    assert b.return_margins and b.margin_max_new_tokens == 3


def test_from_model_id_passes_load_options_through(tiny_model_dirs, monkeypatch):
    c = WiMChain.from_model_id(str(tiny_model_dirs["llama"]), margin_max_new_tokens=3, return_margins=True)
    assert c.margin_max_new_tokens == 3 and c.return_margins and c.wim.model_name
    seen = {}

    def fake(cls, model, **kw):
        seen.update(model=model, **kw)
        return c.wim

    monkeypatch.setattr(WiM, "from_pretrained", classmethod(fake))
    d = WiMChain.from_model_id("some/model", device="cpu", dtype="auto", model_kwargs={"x": 1}, segment_tokens=200)
    assert seen == {"model": "some/model", "device": "cpu", "dtype": "auto", "model_kwargs": {"x": 1}}
    assert d.segment_tokens == 200 and d.wim is c.wim
    assert WiMChain.from_pretrained("other", max_tokens=5).max_tokens == 5


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")  # as_tool is beta
def test_as_tool(chain, reference):
    tool = chain.as_tool(name="read_long_context", description="Answer a question from long documents")
    schema = tool.tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"question", "context"} and set(schema["required"]) == {"question", "context"}
    assert tool.invoke({"question": QUESTION, "context": DOCS}) == reference.answer
    bound = chain.with_context(DOCS).as_tool(name="read_docs", description="Answer from the bound documents")
    schema = bound.tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"question"} and schema["required"] == ["question"]
    assert bound.invoke({"question": QUESTION}) == reference.answer


# -- LCEL composition ----------------------------------------------------------------------------------------
def test_lcel_with_a_real_retriever(chain):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents(DOCS)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    retrieved = retriever.invoke(QUESTION)

    def format_docs(docs):
        return "\n\n".join(d.page_content for d in docs)

    text_chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | chain | StrOutputParser()
    assert text_chain.invoke(QUESTION) == chain.invoke({"question": QUESTION, "context": format_docs(retrieved)})

    doc_chain = {"context": retriever, "question": RunnablePassthrough()} | chain.with_margins()
    result = doc_chain.invoke(QUESTION)
    got = {d.doc_id for m in result["margins"] for d in m.documents}
    assert got == {d.id for d in retrieved}

    par = RunnableParallel(answer=chain, n_docs=RunnableLambda(lambda x: len(x["context"])))
    out = par.invoke({"question": QUESTION, "context": DOCS})
    assert out["n_docs"] == 3 and out["answer"] == chain.invoke({"question": QUESTION, "context": DOCS})


# -- events and handlers -------------------------------------------------------------------------------------
def test_astream_events_carry_wim_events_with_parentage(chain, reference):
    async def collect():
        return [e async for e in chain.astream_events({"question": QUESTION, "context": DOCS}, version="v2")]

    events = asyncio.run(collect())
    root = next(e for e in events if e["event"] == "on_chain_start" and e["name"] == "WiMChain")
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert {e["name"] for e in custom} == set(EVENT_NAMES)
    assert all(e["run_id"] == root["run_id"] for e in custom)
    assert all(e["parent_ids"] == root["parent_ids"] for e in custom)
    names = [e["name"] for e in custom]
    assert names.count("wim_segment_read") == names.count("wim_margin_written") == reference.n_segments
    json.dumps([e["data"] for e in custom])  # payloads are plain JSON
    final = parse_event("wim_finished", custom[-1]["data"])
    assert stable(final.result) == stable(reference)
    margin_runs = [e for e in events if e["event"] == "on_llm_end" and e["name"] == MARGIN_RUN]
    assert len(margin_runs) == reference.n_segments
    assert all(root["run_id"] in e["parent_ids"] for e in margin_runs)
    streamed = "".join(e["data"]["chunk"] for e in events if e["event"] == "on_chain_stream")
    assert streamed.strip() == reference.answer


class Hooks(WiMCallbackHandler):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_segment_read(self, event, *, run_id):
        self.calls.append(("segment", event))

    def on_margin(self, event, *, run_id):
        self.calls.append(("margin", event))

    def on_answer_token(self, event, *, run_id):
        self.calls.append(("answer_token", event))

    def on_wim_end(self, event, *, run_id):
        self.calls.append(("end", event))


def test_typed_hooks_and_console_handler(chain, reference, capsys):
    hooks, console = Hooks(), ConsoleProgressHandler(show_answer=True)
    chain.invoke({"question": QUESTION, "context": DOCS}, {"callbacks": [hooks, console]})
    kinds = [k for k, _ in hooks.calls]
    assert kinds.count("segment") == kinds.count("margin") == reference.n_segments
    margins = [e.margin for k, e in hooks.calls if k == "margin"]
    assert [stable_margin(m) for m in margins] == [stable_margin(m) for m in reference.margins]
    assert "".join(e.text for k, e in hooks.calls if k == "answer_token").strip() == reference.answer
    assert kinds[-1] == "end" and hooks.calls[-1][1].result.answer == reference.answer
    err = capsys.readouterr().err
    n = reference.n_segments
    assert f"{n}/{n} segments read" in err
    for m in reference.margins:
        assert f"margin {m.segment_index + 1} [{m.verdict}" in err


class Broken(WiMCallbackHandler):
    def on_margin(self, event, *, run_id):
        raise RuntimeError("handler bug")


def test_raising_handler_does_not_break_inference(chain, reference, caplog):
    with caplog.at_level(logging.WARNING):
        assert chain.invoke({"question": QUESTION, "context": DOCS}, {"callbacks": [Broken()]}) == reference.answer
        assert "".join(chain.stream({"question": QUESTION, "context": DOCS}, {"callbacks": [Broken()]})).strip() == (
            reference.answer
        )
    assert "handler bug" in caplog.text
    strict = Broken()
    strict.raise_error = True  # LangChain's opt-in to propagate handler errors
    with pytest.raises(RuntimeError, match="handler bug"):
        chain.invoke({"question": QUESTION, "context": DOCS}, {"callbacks": [strict]})


# -- LangSmith trace -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langsmith_trace_has_margin_children(chain, reference, mode):
    client = RecordingClient()
    tracer = langsmith_tracer(client=client)
    x, cfg = {"question": QUESTION, "context": DOCS}, {"callbacks": [tracer]}
    answer = chain.invoke(x, cfg) if mode == "sync" else asyncio.run(chain.ainvoke(x, cfg))
    tracer.wait_for_futures()
    assert answer == reference.answer
    roots = [r for r in client.recorded.values() if r.get("parent_run_id") is None]
    assert [r["name"] for r in roots] == ["WiMChain"] and roots[0]["outputs"]["output"] == reference.answer
    children = client.children(roots[0]["id"])
    assert [c["name"] for c in children] == [MARGIN_RUN, CLASSIFY_RUN] * reference.n_segments + [ANSWER_RUN]
    for child, classify, margin in zip(children[:-1:2], children[1::2], reference.margins, strict=True):
        assert child["run_type"] == "llm" and {"wim", MARGIN_RUN} <= set(child["tags"])
        gen = child["outputs"]["generations"][0][0]
        assert gen["text"] == margin.text and gen["generation_info"]["verdict"] == margin.verdict
        assert child["extra"]["metadata"]["wim_segment_index"] == margin.segment_index
        assert {"wim", CLASSIFY_RUN} <= set(classify["tags"])
        assert classify["outputs"]["generations"][0][0]["text"] == margin.classifier_output
    assert children[-1]["outputs"]["generations"][0][0]["text"] == reference.answer


def test_trace_tree_and_tracer_choice(chain, monkeypatch):
    client = RecordingClient()
    tracer = langsmith_tracer(client=client)
    WiMChain(wim=chain.wim, classification="inline").invoke(
        {"question": QUESTION, "context": DOCS[0]}, {"callbacks": [tracer]}
    )
    tracer.wait_for_futures()
    lines = trace_tree(client).splitlines()  # inline classification: no wim_classify run
    assert lines[0] == "WiMChain [chain]"
    assert lines[1:] == ["  wim_margin [llm] wim,wim_margin", "  wim_answer [llm] wim,wim_answer"]

    for key in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert isinstance(langsmith_tracer().client, RecordingClient)
    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-test-key")
    real = langsmith_tracer().client
    assert type(real) is langsmith.Client


@pytest.mark.parametrize(
    "prompt",
    [
        ChatPromptTemplate.from_messages([("system", "{context}"), ("human", "{question}")]),
        ChatPromptTemplate.from_messages([MessagesPlaceholder("messages")]),
        PromptTemplate.from_template("{context}\n\n{question}"),
    ],
)
def test_a_prompt_in_front_of_the_chain_is_told_what_to_use(chain, prompt):
    pipeline = prompt | chain
    values = {"context": "Mary went to the kitchen.", "question": QUESTION, "messages": [("human", QUESTION)]}
    values = {k: v for k, v in values.items() if k in prompt.input_variables}
    with pytest.raises(WiMInputError, match=r"use ChatWiM .*\{'context': retriever, 'question'"):
        pipeline.invoke(values)
    with pytest.raises(WiMInputError, match="ChatWiM"):
        chain.invoke({"messages": [HumanMessage(QUESTION)]})
