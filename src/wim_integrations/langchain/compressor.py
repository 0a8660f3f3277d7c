"""`WiMDocumentCompressor`: WiM margins as a document filter in front of any reader.

retriever = ContextualCompressionRetriever(base_compressor=WiMDocumentCompressor(wim=...), base_retriever=base)

WiM reads the retrieved documents (in order) with every document starting a segment of its own, and writes a margin
per segment; no final answer is generated. Each document is judged by the margins on it (`filtering.py`): it is kept
when one is relevant, with its own margin, verdict and score in its metadata. Like LangChain's `LLMChainFilter` (and,
with `top_n`, LlamaIndex's `LLMRerank`), but one WiM run over all documents, sharing one cache. With `hops > 1`, the
documents the margins dropped are judged again given the kept ones (`filtering.follow_hops`), for multi-hop questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.callbacks.manager import AsyncCallbackManager, CallbackManager
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from ..engine import WiM, WiMStream
from ..errors import WiMInputError
from ..events import Margin
from ..filtering import (
    DEFAULT_HOP_THRESHOLD,
    MAX_HOPS,
    DocumentJudgement,
    follow_hops,
    judge_documents,
    kept_documents,
)
from ..reading.hops import check_scoring
from ..reading.margins import aread_until_answer, read_until_answer
from .chain import to_engine_context
from .events import AsyncEventRelay, EventRelay
from .settings import WiMSettings

RUN_NAME = "WiMDocumentCompressor"


def _default_wim() -> WiM:
    return WiM.default()


class WiMDocumentCompressor(WiMSettings, BaseDocumentCompressor):
    """Keeps the documents whose WiM margins are relevant to the query (no answer is generated).

    Every document starts a segment of its own (`merge_documents=False` unless set to True), so each margin is
    about one document; a document longer than a segment gets several margins and is kept when any is relevant.
    Kept documents are copies with metadata ``wim_margin`` (the relevant margins on it, joined by blank lines),
    ``wim_verdict`` (their verdicts), ``wim_score`` (their highest `Margin.score`, None when the classification mode
    computes none) and ``wim_segments`` (segment indices). `top_n` keeps only the best-scored relevant documents;
    `kept_order` returns them as retrieved or best first. `hops` > 1 judges the dropped documents again given the
    kept ones, up to `hops - 1` times (multi-hop questions, `filtering.follow_hops`; unset: 2 where the backend has
    prompt log-probabilities, 1 on a server without them); a document kept that way has
    ``wim_hop`` (the hop, 2 or more) and ``wim_lift`` (its evidence lift) in its metadata, no margin and no score,
    and `top_n` ranks it after the margin-kept ones. Settings: one optional field per `WiMConfig` field.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wim: WiM = Field(default_factory=_default_wim, exclude=True, description="the engine (default: WiM.default())")
    top_n: int | None = Field(
        None, ge=1, description="keep at most this many relevant documents, the best-scored (None: every relevant one)"
    )
    kept_order: Literal["retrieval", "score"] = Field(
        "retrieval", description="order of the kept documents: as retrieved, or best score first"
    )
    hops: int | None = Field(
        None,
        ge=1,
        le=MAX_HOPS,
        description="judging passes: 1 the margins only; n > 1 also judges the dropped documents again given the kept "
        "ones, up to n - 1 times (multi-hop questions); None: 2 where the backend has prompt log-probabilities, else 1",
    )
    hop_threshold: float = Field(
        DEFAULT_HOP_THRESHOLD,
        allow_inf_nan=False,
        description="evidence lift (nats per question token) a later hop needs to keep a document",
    )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        stream = self._start(documents, query)
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        run = manager.on_chain_start(None, {"query": query, "documents": list(documents)}, name=RUN_NAME)
        relay = EventRelay({"callbacks": run.get_child()}, stream)
        try:
            margins = read_until_answer(stream, relay)  # margins are all we need: no answer is decoded
        except BaseException as exc:
            relay.close(exc)
            run.on_chain_error(exc)
            raise
        kept = self._keep(documents, self._judge(documents, margins, query))
        run.on_chain_end({"documents": kept})
        return kept

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        stream = self._start(documents, query)
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        run = await manager.on_chain_start(None, {"query": query, "documents": list(documents)}, name=RUN_NAME)
        relay = AsyncEventRelay({"callbacks": run.get_child()}, stream)
        try:
            margins = await aread_until_answer(stream, relay)
        except BaseException as exc:
            await relay.close(exc)
            await run.on_chain_error(exc)
            raise
        # The later hops' scoring passes run off the event loop, as the reading did.
        kept = self._keep(documents, await asyncio.to_thread(self._judge, documents, margins, query))
        await run.on_chain_end({"documents": kept})
        return kept

    def _start(self, documents: Sequence[Document], query: str) -> WiMStream:
        """Plan the read (input errors raise here, before any compute): one segment per document unless asked."""
        if isinstance(documents, str) or not isinstance(documents, Sequence):
            raise WiMInputError(f"documents must be a list of Documents, not {type(documents).__name__}.")
        for i, d in enumerate(documents):
            if not isinstance(d, Document):
                raise WiMInputError(
                    f"documents[{i}] is a {type(d).__name__}, not a Document: the compressor returns the documents it "
                    "keeps, with their metadata; wrap text as Document(page_content=...)."
                )
        if self.hops is not None and self.hops > 1:
            check_scoring(self.wim.backend)  # refused now, not after the whole read
        overrides = {"merge_documents": False, **self.wim_overrides()}
        return self.wim.stream(to_engine_context(list(documents)), query, **overrides)

    def _judge(self, documents: Sequence[Document], margins: list[Margin], query: str) -> list[DocumentJudgement]:
        """Every document judged: by its margins, then by the later hops (if any)."""
        judged = judge_documents(margins, len(documents))
        texts = [d.page_content for d in documents]
        return follow_hops(judged, texts, self.wim.backend, query, hops=self.hops, hop_threshold=self.hop_threshold)

    def _keep(self, documents: Sequence[Document], judgements: list[DocumentJudgement]) -> list[Document]:
        """The kept documents (relevant, the best `top_n`, in `kept_order`), each with its own margins attached."""
        judged = kept_documents(judgements, top_n=self.top_n, kept_order=self.kept_order)
        kept = []
        for j in judged:
            doc, ms = documents[j.index], j.relevant_margins
            meta: dict[str, Any] = {
                **doc.metadata,
                "wim_margin": "\n\n".join(m.text for m in ms),
                "wim_verdict": [m.verdict for m in ms],
                "wim_score": j.score,
                "wim_segments": [m.segment_index for m in ms],
            }
            if j.hop is not None:
                meta |= {"wim_hop": j.hop, "wim_lift": j.lift}
            kept.append(doc.model_copy(update={"metadata": meta}))
        return kept
