"""`WiMQueryEngine`: retrieve, then read with WiM. From a retriever, an index, or plain documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.base import BaseIndex
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import Document, NodeWithScore, QueryBundle

from ..engine import WiM
from ..errors import WiMInputError
from .synthesizer import ReadingOrder, WiMSynthesizer


class WholeDocumentsRetriever(BaseRetriever):
    """Returns every document, whole and in the given order: WiM does its own segmenting, so no chunking."""

    def __init__(self, documents: Sequence[Document | str], callback_manager: CallbackManager | None = None) -> None:
        docs: list[Document] = []
        for i, d in enumerate(documents):
            if isinstance(d, str):
                d = Document(text=d)
            if not isinstance(d, Document):
                raise WiMInputError(f"documents[{i}] is a {type(d).__name__}; pass llama_index Documents or strings.")
            docs.append(d)
        if not docs:
            raise WiMInputError("no documents given; pass at least one Document or string.")
        self._documents = docs
        super().__init__(callback_manager=callback_manager)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=d, score=None) for d in self._documents]


class WiMQueryEngine(RetrieverQueryEngine):
    """A `RetrieverQueryEngine` whose reader is WiM (a `BaseQueryEngine`: works in `QueryEngineTool`,
    `RouterQueryEngine`, `CondenseQuestionChatEngine`, ...).

    `query`/`aquery` return `Response` (or `StreamingResponse`/`AsyncStreamingResponse` with `streaming=True`) whose
    `metadata["wim"]["margins"]` holds the margins with the ids of the nodes each was written on. The WiM prompts are
    exposed as `response_synthesizer:<name>` in `get_prompts()` and can be changed with `update_prompts()`.
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        wim: WiM | None = None,
        *,
        response_synthesizer: WiMSynthesizer | None = None,
        node_postprocessors: list[BaseNodePostprocessor] | None = None,
        callback_manager: CallbackManager | None = None,
        streaming: bool = False,
        order: ReadingOrder = "document",
        **config_overrides: Any,
    ) -> None:
        if response_synthesizer is not None and (wim is not None or config_overrides):
            raise WiMInputError("pass either response_synthesizer or wim/WiM settings, not both.")
        synth = response_synthesizer or WiMSynthesizer(
            wim, streaming=streaming, order=order, callback_manager=callback_manager, **config_overrides
        )
        super().__init__(
            retriever,
            response_synthesizer=synth,
            node_postprocessors=node_postprocessors,
            callback_manager=callback_manager,
        )

    @property
    def synthesizer(self) -> WiMSynthesizer:
        return self._response_synthesizer  # type: ignore[return-value]

    @classmethod
    def from_index(
        cls, index: BaseIndex, wim: WiM | None = None, *, retriever_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> WiMQueryEngine:
        """Retrieve with `index.as_retriever(**retriever_kwargs)` (e.g. `{"similarity_top_k": 8}`)."""
        return cls(index.as_retriever(**(retriever_kwargs or {})), wim, **kwargs)

    @classmethod
    def from_documents(
        cls, documents: Sequence[Document | str], wim: WiM | None = None, **kwargs: Any
    ) -> WiMQueryEngine:
        """Whole-document WiM: every query reads all `documents`, in order (no retrieval, no chunking)."""
        return cls(WholeDocumentsRetriever(documents), wim, **kwargs)
