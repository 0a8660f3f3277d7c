"""`WiMNodePostprocessor`: WiM in front of another reader, in the slot of LlamaIndex's `LLMRerank`.

It reads the retrieved nodes with WiM margins (no final answer), every node starting a segment of its own, keeps the
nodes whose margins are relevant (the best `top_n` of them when set, like `LLMRerank`) and attaches each kept node's
own margins and score to its metadata; any response synthesizer then answers from them. `hops > 1` judges the nodes
the margins dropped again given the kept ones (`filtering.follow_hops`), for multi-hop questions:

    engine = index.as_query_engine(llm=WiMLLM(wim), node_postprocessors=[WiMNodePostprocessor(wim)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from ..config import WiMConfig
from ..engine import WiM
from ..errors import WiMInputError
from ..events import Margin
from ..filtering import (
    DEFAULT_HOP_THRESHOLD,
    DocumentJudgement,
    KeptOrder,
    check_filter_settings,
    follow_hops,
    judge_documents,
    kept_documents,
    resolve_hops,
)
from ..reading.hops import check_scoring
from ..reading.margins import read_until_answer
from .synthesizer import ReadingOrder, node_documents, reading_order
from .tracing import RunTracer

dispatcher = get_dispatcher(__name__)

MARGIN_KEY = "wim_margin"
SCORE_KEY = "wim_margin_score"
HOP_KEY = "wim_hop"
LIFT_KEY = "wim_lift"


class WiMNodePostprocessor(BaseNodePostprocessor):
    """Keep the nodes on which WiM wrote a relevant margin.

    The nodes are read as `WiMSynthesizer` reads them (same `order`, node id = document id), segment by segment,
    with `margin_scope="segment"` (a margin about its own segment, not all text read so far) and
    `merge_documents=False` (every node starts a segment: each margin is about one node) unless set otherwise; a long
    node gets several segments, so a node is kept when any margin written on it is relevant. A kept node is a copy
    (the retriever's node is not modified) whose metadata gains `wim_margin` (the text of its relevant margins, in
    reading order) and `wim_margin_score` (their best `Margin.score`, None when the classification mode computes
    none). Both keys are excluded from embeddings, and from the next reader's prompt unless `margins_in_prompt=True`.
    Kept nodes keep their retrieval score, and their retrieval order unless `kept_order="score"`.

    Args:
        wim: the reader; `WiM.default()` (shared) when None.
        order, metadata_mode: as in `WiMSynthesizer`.
        margins_in_prompt: let the next reader see `wim_margin` in the node text (LlamaIndex's LLM metadata mode).
        top_n: keep at most this many relevant nodes, the best-scored (None: every relevant node).
        kept_order: "retrieval" (the order the nodes came in) or "score" (best `wim_margin_score` first).
        hops: judging passes: 1 the margins only; n > 1 also judges the nodes the margins dropped again given the
            kept ones (evidence lift, `filtering.follow_hops`), up to n - 1 times; None: 2 where the backend has
            prompt log-probabilities, else 1. A node kept that way has
            `wim_hop` (2 or more) and `wim_lift` in its metadata, an empty `wim_margin`, no score, and `top_n` ranks
            it after the margin-kept nodes.
        hop_threshold: the evidence lift (nats per question token) a later hop needs to keep a node.
        config, **config_overrides: WiM settings (`classification`, `margin_max_new_tokens`, `merge_documents`, ...).
    """

    order: ReadingOrder = "document"
    metadata_mode: MetadataMode = MetadataMode.LLM
    margins_in_prompt: bool = Field(False, description="show the attached margins to the next reader's LLM")
    top_n: int | None = Field(None, description="keep at most this many relevant nodes, the best-scored")
    kept_order: KeptOrder = Field("retrieval", description="kept nodes as retrieved, or best score first")
    hops: int | None = Field(None, description="judging passes: 1 the margins only, n > 1 also n - 1 hops given kept")
    hop_threshold: float = Field(DEFAULT_HOP_THRESHOLD, description="evidence lift a later hop needs to keep a node")
    _wim: WiM = PrivateAttr()
    _config: WiMConfig = PrivateAttr()

    def __init__(
        self,
        wim: WiM | None = None,
        *,
        order: ReadingOrder = "document",
        metadata_mode: MetadataMode = MetadataMode.LLM,
        margins_in_prompt: bool = False,
        top_n: int | None = None,
        kept_order: KeptOrder = "retrieval",
        hops: int | None = None,
        hop_threshold: float = DEFAULT_HOP_THRESHOLD,
        config: WiMConfig | None = None,
        callback_manager: CallbackManager | None = None,
        **config_overrides: Any,
    ) -> None:
        reading_order([], order)  # validate now
        check_filter_settings(top_n, kept_order, hops, hop_threshold)
        wim = wim if wim is not None else WiM.default()
        if hops is not None and hops > 1:
            check_scoring(wim.backend)
        base = config or wim.config
        # A margin should be about its own node (margin_scope "segment", one node per segment, unless asked
        # otherwise), and no answer is generated, so its budget need not fit the model window.
        defaults = {"margin_scope": "segment", "merge_documents": False}
        cfg = base.with_updates(**{**defaults, **config_overrides, "answer_max_new_tokens": 1})
        kwargs: dict[str, Any] = {"callback_manager": callback_manager} if callback_manager is not None else {}
        super().__init__(
            order=order,
            metadata_mode=metadata_mode,
            margins_in_prompt=margins_in_prompt,
            top_n=top_n,
            kept_order=kept_order,
            hops=hops,
            hop_threshold=hop_threshold,
            **kwargs,
        )
        self._wim, self._config = wim, cfg

    @classmethod
    def class_name(cls) -> str:
        return "WiMNodePostprocessor"

    @property
    def wim(self) -> WiM:
        return self._wim

    @property
    def config(self) -> WiMConfig:
        return self._config

    def read(self, nodes: Sequence[NodeWithScore], query_str: str) -> list[Margin]:
        """The margins WiM writes on `nodes` for `query_str` (the reading half of a WiM run; no answer)."""
        docs = node_documents(nodes, self.order, self.metadata_mode)
        stream = self._wim.stream(docs, query_str, config=self._config)  # bad input raises here, before compute
        texts = {d.id: d.text for d in docs if d.id}
        tracer = RunTracer(dispatcher, self, active_span_id.get(), self.callback_manager, query_str, texts)
        tracer.start(len(docs))
        try:
            margins = read_until_answer(stream, tracer.on_event)  # the margins-only run: no answer is decoded
        except BaseException as exc:
            tracer.abort(exc)
            raise
        tracer.finish_reading(margins)
        return margins

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise WiMInputError(
                "WiMNodePostprocessor needs the query its margins are about: call postprocess_nodes(nodes, "
                "query_str=...) or query_bundle=... (query engines pass it for you)."
            )
        if not nodes:
            return []
        margins = self.read(nodes, query_bundle.query_str)
        read = reading_order(nodes, self.order)  # margins name their documents by position in this list
        judged = judge_documents(margins, len(read))
        retrieved = {n.node.node_id: i for i, n in reversed(list(enumerate(nodes)))}  # first occurrence of each node
        by_retrieval = sorted(judged, key=lambda j: retrieved[read[j.index].node.node_id])
        if resolve_hops(self.hops, self._wim.backend) > 1:
            texts = [d.text for d in node_documents(nodes, self.order, self.metadata_mode)]  # as read, same order
            by_retrieval = follow_hops(
                by_retrieval,
                texts,
                self._wim.backend,
                query_bundle.query_str,
                hops=self.hops,
                hop_threshold=self.hop_threshold,
            )
        return [
            NodeWithScore(node=self._annotated(read[j.index].node, j), score=read[j.index].score)
            for j in kept_documents(by_retrieval, top_n=self.top_n, kept_order=self.kept_order)
        ]

    def _annotated(self, node: Any, judged: DocumentJudgement) -> Any:
        copy = node.model_copy()
        copy.metadata = {
            **node.metadata,
            MARGIN_KEY: "\n\n".join(m.text for m in judged.relevant_margins),
            SCORE_KEY: judged.score,
        }
        keys = [MARGIN_KEY, SCORE_KEY]
        if judged.hop is not None:
            copy.metadata |= {HOP_KEY: judged.hop, LIFT_KEY: judged.lift}
            keys += [HOP_KEY, LIFT_KEY]
        copy.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, *keys]
        if not self.margins_in_prompt:
            copy.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, *keys]
        return copy
