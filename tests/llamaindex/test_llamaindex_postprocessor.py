"""WiMNodePostprocessor on the tiny random model: the nodes it keeps, what it attaches, its query-engine wiring."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import Field
from test_llamaindex import QUESTION, TEXTS, HashEmbedding

from wim_integrations import DocumentSpan, Margin, WiMInputError
from wim_integrations.llamaindex import WiMAnswerStartEvent, WiMMarginEvent, WiMNodePostprocessor
from wim_integrations.llamaindex.synthesizer import node_documents


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(
        docs, embed_model=HashEmbedding(), transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0)]
    )


def _margin(i: int, node_ids: list[str], relevant: bool, score: float | None = None) -> Margin:
    return Margin(
        segment_index=i,
        text=f"note {i}",
        relevant=relevant,
        verdict="yes" if relevant else "no",
        score=score,
        char_span=(0, 1),
        token_span=(0, 1),
        documents=[DocumentSpan(doc_index="abcd".index(n), doc_id=n, start_char=0, end_char=1) for n in node_ids],
        n_tokens=2,
        seconds=0.0,
    )


def test_keeps_the_nodes_a_relevant_margin_was_written_on(tiny_wim, monkeypatch):
    nodes = [NodeWithScore(node=TextNode(id_=i, text=f"text {i}", metadata={"k": i}), score=s) for i, s in
             [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]]  # fmt: skip
    margins = [
        _margin(0, ["a", "b"], True, 0.2),  # one segment over two small nodes: both kept
        _margin(1, ["b"], False, -1.0),
        _margin(2, ["c"], True),  # a long node over two segments: both relevant margins attached
        _margin(3, ["c"], True, 0.9),
        _margin(4, ["d"], False),
    ]
    post = WiMNodePostprocessor(tiny_wim)
    seen: list[tuple] = []
    monkeypatch.setattr(
        WiMNodePostprocessor, "read", lambda self, n, q: seen.append(([x.node.node_id for x in n], q)) or margins
    )
    kept = post.postprocess_nodes(nodes, query_str=QUESTION)
    assert seen == [(["a", "b", "c", "d"], QUESTION)]
    assert [(n.node.node_id, n.score) for n in kept] == [("a", 0.9), ("b", 0.8), ("c", 0.7)]  # retrieval order
    meta = {n.node.node_id: n.node.metadata for n in kept}
    assert meta["a"] == {"k": "a", "wim_margin": "note 0", "wim_margin_score": 0.2}
    assert meta["b"]["wim_margin"] == "note 0"  # its irrelevant margin is not attached
    assert meta["c"]["wim_margin"] == "note 2\n\nnote 3" and meta["c"]["wim_margin_score"] == 0.9
    assert all(n.node.metadata == {"k": n.node.node_id} for n in nodes)  # the retrieved nodes are not modified
    text = kept[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert "note 0" not in text and "k: a" in text  # hidden from the next reader by default
    assert "note 0" not in kept[0].node.get_content(metadata_mode=MetadataMode.EMBED)
    shown = WiMNodePostprocessor(tiny_wim, margins_in_prompt=True).postprocess_nodes(nodes, query_str=QUESTION)
    assert "wim_margin: note 0" in shown[0].node.get_content(metadata_mode=MetadataMode.LLM)


def test_reads_like_the_core_and_stops_before_the_answer(index, tiny_wim):
    class Recorder(BaseEventHandler):
        events: list = Field(default_factory=list)

        def handle(self, event, **kwargs) -> None:
            self.events.append(event)

    retrieved = index.as_retriever(similarity_top_k=4).retrieve(QUESTION)
    docs = node_documents(retrieved, "document", MetadataMode.LLM)
    scored = 0
    for mode in ("none", "same_model", "lexical", "pmi"):
        direct = tiny_wim.run(docs, QUESTION, classification=mode, margin_scope="segment", merge_documents=False)
        relevant_ids = {d.doc_id for m in direct.margins if m.relevant for d in m.documents}
        rec = Recorder(events=[])
        get_dispatcher().add_event_handler(rec)
        try:
            post = WiMNodePostprocessor(tiny_wim, classification=mode, hops=1)  # the margins' judgement alone
            kept = post.postprocess_nodes(retrieved, query_str=QUESTION)
        finally:
            get_dispatcher().event_handlers.remove(rec)
        assert [n.node.node_id for n in kept] == [n.node.node_id for n in retrieved if n.node.node_id in relevant_ids]
        for n in kept:  # the best score of the relevant margins written on the node (None where the mode has none)
            scores = [
                m.score for m in direct.margins if m.relevant and n.node.node_id in {d.doc_id for d in m.documents}
            ]
            expected = max(scores) if None not in scores else None
            assert n.node.metadata["wim_margin_score"] == pytest.approx(expected)
            scored += expected is not None
        margins = [e for e in rec.events if isinstance(e, WiMMarginEvent)]
        assert [m.text for m in margins] == [m.text for m in direct.margins]  # the same margins, traced
        assert not [e for e in rec.events if isinstance(e, WiMAnswerStartEvent)]  # no answer was generated
    assert scored  # some node was kept with a score (pmi keeps these tiny-model margins): the check above ran


def test_in_node_postprocessors_in_front_of_another_reader(index, tiny_wim):
    reader = get_response_synthesizer(llm=MockLLM(), response_mode="simple_summarize")  # echoes its prompt
    engine = RetrieverQueryEngine(
        index.as_retriever(similarity_top_k=3),
        response_synthesizer=reader,
        node_postprocessors=[WiMNodePostprocessor(tiny_wim, classification="none")],
    )
    r = engine.query(QUESTION)
    assert len(r.source_nodes) == 3  # "none" keeps every margin, so every node
    assert all(n.node.metadata["wim_margin"] is not None for n in r.source_nodes)
    for n in r.source_nodes:
        assert n.node.get_content() in r.response  # the other reader read the kept nodes
    ra = asyncio.run(engine.aquery(QUESTION))
    assert [n.node.metadata["wim_margin"] for n in ra.source_nodes] == [
        n.node.metadata["wim_margin"] for n in r.source_nodes
    ]


def test_bad_input(tiny_wim):
    post = WiMNodePostprocessor(tiny_wim)
    node = NodeWithScore(node=TextNode(id_="a", text="x"), score=1.0)
    with pytest.raises(WiMInputError, match="query_str"):
        post.postprocess_nodes([node])
    assert post.postprocess_nodes([], QueryBundle(QUESTION)) == []
    with pytest.raises(WiMInputError, match="empty"):
        post.postprocess_nodes([node], query_str=" ")
    with pytest.raises(ValueError, match="order"):
        WiMNodePostprocessor(tiny_wim, order="random")
    with pytest.raises(ValueError, match="no_such_setting"):
        WiMNodePostprocessor(tiny_wim, no_such_setting=1)
    with pytest.raises(WiMInputError, match="top_n"):
        WiMNodePostprocessor(tiny_wim, top_n=0)
    with pytest.raises(WiMInputError, match="kept_order"):
        WiMNodePostprocessor(tiny_wim, kept_order="best")


SHORT = ["Mary went to the kitchen.", "The secret code is 4417.", "Paris is the capital of France.", "Numbers 0 1 2."]


def _short_nodes() -> list[NodeWithScore]:
    # One source document, retrieved in reverse offset order: the reading order ("document") is not the retrieval order.
    source = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc")}
    return [
        NodeWithScore(
            node=TextNode(id_=f"n{i}", text=t, start_char_idx=10 * (3 - i), relationships=source), score=1.0 - i / 10
        )
        for i, t in enumerate(SHORT)
    ]


def test_each_node_gets_its_own_margin(tiny_wim):
    nodes = [NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=1.0) for i, t in enumerate(SHORT)]
    post = WiMNodePostprocessor(tiny_wim, classification="none")
    margins = post.read(nodes, QUESTION)
    assert [[d.doc_id for d in m.documents] for m in margins] == [[f"n{i}"] for i in range(len(SHORT))]
    kept = post.postprocess_nodes(nodes, query_str=QUESTION)
    assert [n.node.metadata["wim_margin"] for n in kept] == [m.text for m in margins]
    merged = WiMNodePostprocessor(tiny_wim, classification="none", merge_documents=True).read(nodes, QUESTION)
    assert len(merged) == 1 and len(merged[0].documents) == len(SHORT)  # asked to merge: one segment for all


@pytest.mark.parametrize("kept_order", ["retrieval", "score"])
def test_top_n_keeps_the_best_scored_nodes(tiny_wim, kept_order):
    settings = {"classification": "pmi", "relevance_threshold": -1e9}  # every node relevant, each with its score
    post = WiMNodePostprocessor(tiny_wim, **settings)
    read = post.read(_short_nodes(), QUESTION)
    assert [m.documents[0].doc_id for m in read] == ["n3", "n2", "n1", "n0"]  # read in document order
    every = post.postprocess_nodes(_short_nodes(), query_str=QUESTION)
    assert [n.node.node_id for n in every] == [f"n{i}" for i in range(len(SHORT))]  # retrieval order, not reading
    scores = {n.node.node_id: n.node.metadata["wim_margin_score"] for n in every}
    assert len(set(scores.values())) == len(SHORT)
    best = sorted(scores, key=lambda i: -scores[i])[:2]
    post = WiMNodePostprocessor(tiny_wim, top_n=2, kept_order=kept_order, **settings)
    kept = post.postprocess_nodes(_short_nodes(), query_str=QUESTION)
    expected = best if kept_order == "score" else [i for i in scores if i in best]
    assert [n.node.node_id for n in kept] == expected
    assert [n.score for n in kept] == [1.0 - int(i[1]) / 10 for i in expected]  # retrieval scores kept


def test_a_second_hop_keeps_nodes_by_evidence_lift_in_retrieval_order(tiny_wim):
    from wim_integrations.reading.hops import EvidenceLift

    lifts = EvidenceLift(tiny_wim.backend, QUESTION).scores(SHORT)  # node i's text, judged given nothing kept
    threshold = sorted(lifts)[1] / 2 + sorted(lifts)[2] / 2  # two of the four reach it
    settings = {"classification": "pmi", "relevance_threshold": 1e9}  # the margins keep nothing
    one = WiMNodePostprocessor(tiny_wim, hops=1, **settings)
    assert one.postprocess_nodes(_short_nodes(), query_str=QUESTION) == []
    post = WiMNodePostprocessor(tiny_wim, hops=2, hop_threshold=threshold, **settings)
    kept = post.postprocess_nodes(_short_nodes(), query_str=QUESTION)
    expected = [f"n{i}" for i, v in enumerate(lifts) if v >= threshold]
    assert [n.node.node_id for n in kept] == expected and len(expected) == 2  # retrieval order, not reading order
    for n in kept:
        assert n.node.metadata["wim_hop"] == 2 and n.node.metadata["wim_lift"] == lifts[int(n.node.node_id[1])]
        assert "wim_hop" in n.node.excluded_llm_metadata_keys and "wim_lift" in n.node.excluded_embed_metadata_keys
    with pytest.raises(WiMInputError, match="hops"):
        WiMNodePostprocessor(tiny_wim, hops=0)
    with pytest.raises(WiMInputError, match="hop_threshold"):
        WiMNodePostprocessor(tiny_wim, hop_threshold=float("inf"))
