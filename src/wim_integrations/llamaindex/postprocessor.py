"""`WiMNodePostprocessor`: WiM in front of another reader, in the slot of LlamaIndex's `LLMRerank`.

It reads the retrieved nodes with WiM margins (no final answer), keeps the nodes whose margins are relevant and
attaches those margins to the kept nodes' metadata; any response synthesizer then answers from them:

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
from ..events import AnswerStarted, Margin, MarginWritten
from .synthesizer import ReadingOrder, node_documents, reading_order
from .tracing import RunTracer

dispatcher = get_dispatcher(__name__)

MARGIN_KEY = "wim_margin"
SCORE_KEY = "wim_margin_score"


class WiMNodePostprocessor(BaseNodePostprocessor):
    """Keep the nodes on which WiM wrote a relevant margin.

    The nodes are read as `WiMSynthesizer` reads them (same `order`, node id = document id), segment by segment,
    with `margin_scope="segment"` unless set otherwise (a margin about its own segment, not all text read so far);
    a segment can cover several small nodes and a long node several segments, so a node is kept when any margin
    written on it is relevant. A kept node is a copy (the retriever's node is not modified) whose metadata gains
    `wim_margin` (the text of its relevant margins, in reading order) and `wim_margin_score` (their best
    `Margin.score`, None when the classification mode computes none). Both keys are excluded from embeddings, and
    from the next reader's prompt unless `margins_in_prompt=True`. Kept nodes keep their retrieval order and score.

    Args:
        wim: the reader; `WiM.default()` (shared) when None.
        order, metadata_mode: as in `WiMSynthesizer`.
        margins_in_prompt: let the next reader see `wim_margin` in the node text (LlamaIndex's LLM metadata mode).
        config, **config_overrides: WiM settings (`classification`, `margin_max_new_tokens`, ...).
    """

    order: ReadingOrder = "document"
    metadata_mode: MetadataMode = MetadataMode.LLM
    margins_in_prompt: bool = Field(False, description="show the attached margins to the next reader's LLM")
    _wim: WiM = PrivateAttr()
    _config: WiMConfig = PrivateAttr()

    def __init__(
        self,
        wim: WiM | None = None,
        *,
        order: ReadingOrder = "document",
        metadata_mode: MetadataMode = MetadataMode.LLM,
        margins_in_prompt: bool = False,
        config: WiMConfig | None = None,
        callback_manager: CallbackManager | None = None,
        **config_overrides: Any,
    ) -> None:
        reading_order([], order)  # validate now
        wim = wim if wim is not None else WiM.default()
        base = config or wim.config
        # A margin should be about its own nodes (margin_scope "segment", unless asked otherwise), and no answer is
        # generated, so its budget need not fit the model window.
        cfg = base.with_updates(**{"margin_scope": "segment", **config_overrides, "answer_max_new_tokens": 1})
        kwargs: dict[str, Any] = {"callback_manager": callback_manager} if callback_manager is not None else {}
        super().__init__(order=order, metadata_mode=metadata_mode, margins_in_prompt=margins_in_prompt, **kwargs)
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
        margins: list[Margin] = []
        try:
            for event in stream:
                if isinstance(event, AnswerStarted):
                    break
                tracer.on_event(event)
                if isinstance(event, MarginWritten):
                    margins.append(event.margin)
        except BaseException as exc:
            tracer.abort(exc)
            raise
        finally:
            stream.close()  # stops before the answer: no answer tokens are generated
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
        on_node: dict[str, list[Margin]] = {}
        for m in margins:
            if m.relevant:
                # An empty node (a span of no characters) has nothing a margin could be about.
                for node_id in dict.fromkeys(d.doc_id for d in m.documents if d.doc_id and d.end_char > d.start_char):
                    on_node.setdefault(node_id, []).append(m)
        kept, seen = [], set()
        for n in nodes:
            node_id = n.node.node_id
            if node_id in seen or node_id not in on_node:
                continue
            seen.add(node_id)
            kept.append(NodeWithScore(node=self._annotated(n.node, on_node[node_id]), score=n.score))
        return kept

    def _annotated(self, node: Any, margins: list[Margin]) -> Any:
        scores = [m.score for m in margins if m.score is not None]
        copy = node.model_copy()
        copy.metadata = {
            **node.metadata,
            MARGIN_KEY: "\n\n".join(m.text for m in margins),
            SCORE_KEY: max(scores) if scores else None,
        }
        keys = [MARGIN_KEY, SCORE_KEY]
        copy.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, *keys]
        if not self.margins_in_prompt:
            copy.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, *keys]
        return copy
