"""WiMDocumentCompressor on the tiny random Llama: which documents it keeps, what it attaches, what it skips."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from test_langchain import DOCS, QUESTION

from wim_integrations import WiM, WiMInputError
from wim_integrations.langchain import MARGIN_RUN, RecordingClient, WiMDocumentCompressor, langsmith_tracer, parse_event
from wim_integrations.reading import judging


class Margins(BaseCallbackHandler):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.margins: list = []

    def on_custom_event(self, name, data, **kwargs):
        self.names.append(name)
        if name == "wim_margin_written":
            self.margins.append(parse_event(name, data).margin)


@pytest.fixture
def alternating_verdicts(monkeypatch):
    """Inline verdicts yes, no, yes, ... by segment (the tiny model's own would be noise)."""
    verdicts = itertools.cycle(["yes", "no"])
    monkeypatch.setattr(judging, "split_inline", lambda text: (next(verdicts), text))


def _expected(margins, docs):
    keep = sorted({s.doc_index for m in margins if m.relevant for s in m.documents})
    return [docs[i].id for i in keep]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_keeps_documents_under_relevant_margins_and_attaches_them(tiny_wim, alternating_verdicts, mode):
    compressor = WiMDocumentCompressor(wim=tiny_wim, classification="inline", segment_tokens=120)
    seen = Margins()
    if mode == "sync":
        kept = compressor.compress_documents(DOCS, QUESTION, callbacks=[seen])
    else:
        kept = asyncio.run(compressor.acompress_documents(DOCS, QUESTION, callbacks=[seen]))
    verdicts = [m.verdict for m in seen.margins]
    assert "yes" in verdicts and "no" in verdicts
    assert [d.id for d in kept] == _expected(seen.margins, DOCS)
    assert 0 < len(kept) <= len(DOCS)
    for doc in kept:
        original = next(d for d in DOCS if d.id == doc.id)
        assert doc.page_content == original.page_content and doc.metadata["source"] == original.metadata["source"]
        on_doc = [m for m in seen.margins if m.relevant and any(s.doc_id == doc.id for s in m.documents)]
        assert doc.metadata["wim_margin"] == "\n\n".join(m.text for m in on_doc)
        assert doc.metadata["wim_verdict"] == ["yes"] * len(on_doc)
        assert doc.metadata["wim_segments"] == [m.segment_index for m in on_doc]
        assert doc.metadata["wim_score"] is None  # inline classification computes no score
    assert all("wim_margin" not in d.metadata for d in DOCS)  # the inputs are not modified
    # margins only: the answer is never started
    assert "wim_margin_written" in seen.names and "wim_answer_started" not in seen.names


def test_scores_are_attached_when_margins_have_them(tiny_wim, monkeypatch):
    from wim_integrations.events import Margin
    from wim_integrations.langchain import compressor as module

    m = Margin(
        segment_index=0,
        text="t",
        relevant=True,
        verdict="yes",
        score=0.25,
        char_span=(0, 1),
        token_span=(0, 1),
        documents=[{"doc_index": 1, "start_char": 0, "end_char": 1}],
        n_tokens=1,
        seconds=0,
    )
    compressor = module.WiMDocumentCompressor(wim=tiny_wim, hops=1)  # the margins' judgement alone
    margins = [m, m.model_copy(update={"score": 0.75}), m.model_copy(update={"relevant": False})]
    kept = compressor._keep(DOCS, compressor._judge(DOCS, margins, QUESTION))
    assert [d.id for d in kept] == ["d2"] and kept[0].metadata["wim_score"] == 0.75


def test_in_a_contextual_compression_retriever_with_a_trace(tiny_wim):
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    store.add_documents(DOCS)
    retriever = ContextualCompressionRetriever(
        base_compressor=WiMDocumentCompressor(wim=tiny_wim, classification="none"),
        base_retriever=store.as_retriever(search_kwargs={"k": 2}),
    )
    client = RecordingClient()
    tracer = langsmith_tracer(client=client)
    docs = retriever.invoke(QUESTION, {"callbacks": [tracer]})
    tracer.wait_for_futures()
    retrieved = store.as_retriever(search_kwargs={"k": 2}).invoke(QUESTION)
    assert [d.id for d in docs] == [d.id for d in retrieved]  # 'none': every margin is relevant, all kept
    assert all(d.metadata["wim_margin"] and d.metadata["wim_verdict"][0] == "unclassified" for d in docs)
    runs = {r["name"]: r for r in client.recorded.values()}
    compressor_run = runs["WiMDocumentCompressor"]
    assert runs[MARGIN_RUN]["parent_run_id"] == compressor_run["id"]
    assert [c["name"] for c in client.children(compressor_run["id"])] == [MARGIN_RUN] * len(
        client.children(compressor_run["id"])
    )


def test_empty_input_bad_query_and_unknown_settings(tiny_wim):
    compressor = WiMDocumentCompressor(wim=tiny_wim)
    assert compressor.compress_documents([], QUESTION) == []
    with pytest.raises(WiMInputError, match="question is empty"):
        compressor.compress_documents(DOCS, "  ")
    with pytest.raises(ValueError, match="Valid:"):
        WiMDocumentCompressor(wim=tiny_wim, top_k=2)
    with pytest.raises(ValueError, match="top_n"):
        WiMDocumentCompressor(wim=tiny_wim, top_n=0)
    with pytest.raises(ValueError, match="kept_order"):
        WiMDocumentCompressor(wim=tiny_wim, kept_order="random")
    assert isinstance(DOCS[0], Document)


def test_default_engine_is_the_process_default(tiny_wim, monkeypatch):
    monkeypatch.setattr(WiM, "default", classmethod(lambda cls, **kw: tiny_wim))
    assert WiMDocumentCompressor().wim is tiny_wim


def test_score_based_classification_scores_the_kept_documents(tiny_wim):
    compressor = WiMDocumentCompressor(wim=tiny_wim, classification="lexical", relevance_threshold=0.0)
    kept = compressor.compress_documents(DOCS, QUESTION)
    assert [d.id for d in kept] == [d.id for d in DOCS]  # threshold 0: every margin is relevant
    assert all(isinstance(d.metadata["wim_score"], float) for d in kept)


SHORT = [
    Document(page_content=text, id=f"s{i}", metadata={"n": i})
    for i, text in enumerate(
        [
            "Mary went to the kitchen.",
            "The secret code is 4417.",
            "Paris is the capital of France.",
            "The quick brown fox jumps over the lazy dog.",
            "Read the text carefully, part by part.",
        ]
    )
]


def test_each_document_gets_its_own_margin(tiny_wim):
    """Short retrieved documents are not merged into one segment: each is judged on a margin of its own."""
    seen = Margins()
    kept = WiMDocumentCompressor(wim=tiny_wim, classification="none").compress_documents(
        SHORT, QUESTION, callbacks=[seen]
    )
    assert [d.id for d in kept] == [d.id for d in SHORT]  # 'none' keeps every margin
    assert [[s.doc_id for s in m.documents] for m in seen.margins] == [[d.id] for d in SHORT]
    assert [d.metadata["wim_segments"] for d in kept] == [[i] for i in range(len(SHORT))]
    assert [d.metadata["wim_margin"] for d in kept] == [m.text for m in seen.margins]
    # the engine's own per-document read gives the same margins: the adapter translates, it does not re-derive
    direct = tiny_wim.run([d.page_content for d in SHORT], QUESTION, classification="none", merge_documents=False)
    assert [m.text for m in direct.margins] == [m.text for m in seen.margins]
    # asked to merge, the five short documents share one segment and one margin
    merged = WiMDocumentCompressor(wim=tiny_wim, classification="none", merge_documents=True)
    assert {tuple(d.metadata["wim_segments"]) for d in merged.compress_documents(SHORT, QUESTION)} == {(0,)}


def test_a_long_document_is_split_and_kept_once(tiny_wim):
    docs = [Document(page_content=DOCS[0].page_content * 3, id="d1"), SHORT[1]]  # the first: over 120 tokens
    seen = Margins()
    kept = WiMDocumentCompressor(wim=tiny_wim, classification="none", segment_tokens=120).compress_documents(
        docs, QUESTION, callbacks=[seen]
    )
    assert [d.id for d in kept] == ["d1", "s1"]
    on_long = [m.segment_index for m in seen.margins if m.documents[0].doc_id == "d1"]
    assert len(on_long) > 1 and kept[0].metadata["wim_segments"] == on_long
    assert kept[1].metadata["wim_segments"] == [len(on_long)]


@pytest.mark.parametrize("kept_order", ["retrieval", "score"])
def test_top_n_keeps_the_best_scored_documents(tiny_wim, kept_order):
    # 'pmi' with a threshold nothing falls under: every document relevant, each with the score of its own margin
    settings = {"classification": "pmi", "relevance_threshold": -1e9}
    every = WiMDocumentCompressor(wim=tiny_wim, **settings).compress_documents(SHORT, QUESTION)
    assert [d.id for d in every] == [d.id for d in SHORT]
    scores = {d.id: d.metadata["wim_score"] for d in every}
    assert len(set(scores.values())) == len(SHORT)  # distinct scores: the choice below is not a tie-break
    best = sorted(scores, key=lambda i: -scores[i])[:2]
    kept = WiMDocumentCompressor(wim=tiny_wim, top_n=2, kept_order=kept_order, **settings).compress_documents(
        SHORT, QUESTION
    )
    expected = best if kept_order == "score" else [d.id for d in SHORT if d.id in best]
    assert [d.id for d in kept] == expected
    assert [d.metadata["wim_score"] for d in kept] == [scores[i] for i in expected]


def _hop_settings(tiny_wim, threshold_pick):
    """Margins that keep nothing ('pmi' over a threshold no margin reaches), so the second hop judges every document
    given none; its threshold between the evidence lifts computed by the scorer itself."""
    from wim_integrations.reading.hops import EvidenceLift

    lifts = EvidenceLift(tiny_wim.backend, QUESTION).scores([d.page_content for d in SHORT])
    assert len(set(lifts)) == len(SHORT)
    return {"classification": "pmi", "relevance_threshold": 1e9, "hops": 2}, lifts, threshold_pick(sorted(lifts))


def test_a_second_hop_keeps_the_documents_whose_evidence_lift_reaches_its_threshold(tiny_wim):
    settings, lifts, threshold = _hop_settings(tiny_wim, lambda s: (s[1] + s[2]) / 2)
    assert WiMDocumentCompressor(wim=tiny_wim, **{**settings, "hops": 1}).compress_documents(SHORT, QUESTION) == []
    kept = WiMDocumentCompressor(wim=tiny_wim, hop_threshold=threshold, **settings).compress_documents(SHORT, QUESTION)
    expected = [d.id for d, v in zip(SHORT, lifts, strict=True) if v >= threshold]
    assert [d.id for d in kept] == expected and len(expected) == len(SHORT) - 2
    unset = {k: v for k, v in settings.items() if k != "hops"}  # hops unset: 2 on a backend that scores prompts
    default = WiMDocumentCompressor(wim=tiny_wim, hop_threshold=threshold, **unset).compress_documents(SHORT, QUESTION)
    assert [d.metadata for d in default] == [d.metadata for d in kept]
    for d in kept:
        assert d.metadata["wim_hop"] == 2 and d.metadata["wim_lift"] == lifts[[s.id for s in SHORT].index(d.id)]
        assert d.metadata["wim_margin"] == "" and d.metadata["wim_score"] is None and d.metadata["n"] is not None


def test_documents_the_margins_kept_are_not_judged_again(tiny_wim):
    settings = {"classification": "pmi", "relevance_threshold": -1e9}
    one = WiMDocumentCompressor(wim=tiny_wim, **settings).compress_documents(SHORT, QUESTION)
    two = WiMDocumentCompressor(wim=tiny_wim, hops=3, hop_threshold=-1e9, **settings).compress_documents(
        SHORT, QUESTION
    )
    assert [d.metadata for d in two] == [d.metadata for d in one] and "wim_hop" not in two[0].metadata


def test_hop_settings_are_checked_and_a_backend_without_logprobs_refused_before_reading(tiny_wim, monkeypatch):
    from dataclasses import replace

    from wim_integrations.errors import SettingsError

    for bad in ({"hops": 0}, {"hops": 9}, {"hop_threshold": float("nan")}):
        with pytest.raises(SettingsError, match="hop"):
            WiMDocumentCompressor(wim=tiny_wim, **bad)
    compressor = WiMDocumentCompressor(wim=tiny_wim, hops=2)
    no_logprobs = replace(tiny_wim.backend.capabilities, scoring="none")  # as a llama.cpp server
    monkeypatch.setattr(type(tiny_wim.backend), "capabilities", property(lambda self: no_logprobs))
    seen = Margins()
    with pytest.raises(WiMInputError, match="prompt log-probabilities"):
        compressor.compress_documents(SHORT, QUESTION, callbacks=[seen])
    assert seen.names == []  # refused before anything was read
