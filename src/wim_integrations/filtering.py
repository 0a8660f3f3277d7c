"""Judging documents by the margins WiM wrote on them: what the document filters of the adapters keep.

`WiMDocumentCompressor` (LangChain) and `WiMNodePostprocessor` (LlamaIndex) read retrieved documents with
`merge_documents=False`, so every margin is about one document (a long document gets several). A document is
relevant when any margin on it is; its score is the best score of those margins. `top_n` keeps the best-scored,
like LlamaIndex's `LLMRerank`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import WiMInputError
from .events import Margin

# The order of the kept documents: as retrieved (the default) or best score first.
KeptOrder = Literal["retrieval", "score"]
KEPT_ORDERS: tuple[str, ...] = ("retrieval", "score")


@dataclass(frozen=True)
class DocumentJudgement:
    """One document of a read list and the margins written on it (reading order)."""

    index: int  # the document's position in the list that was read
    margins: tuple[Margin, ...]

    @property
    def relevant_margins(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]

    @property
    def relevant(self) -> bool:
        return any(m.relevant for m in self.margins)

    @property
    def score(self) -> float | None:
        """The best score of its relevant margins (None when the classification mode computes none)."""
        scores = [m.score for m in self.relevant_margins if m.score is not None]
        return max(scores) if scores else None


def judge_documents(margins: Sequence[Margin], n_documents: int) -> list[DocumentJudgement]:
    """One judgement per document of the read list, in its order, from the run's margins."""
    on_doc: list[list[Margin]] = [[] for _ in range(n_documents)]
    for m in margins:
        # A margin once per document; an empty document has nothing a margin could be about.
        for index in dict.fromkeys(span.doc_index for span in m.documents if span.end_char > span.start_char):
            on_doc[index].append(m)
    return [DocumentJudgement(i, tuple(ms)) for i, ms in enumerate(on_doc)]


def check_filter_settings(top_n: object, kept_order: object) -> None:
    """`WiMInputError` for a `top_n` that is not a positive int (or None) or an unknown `kept_order`."""
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise WiMInputError(f"top_n must be a positive integer or None (keep every relevant document), not {top_n!r}.")
    if kept_order not in KEPT_ORDERS:
        raise WiMInputError(f"kept_order must be one of {list(KEPT_ORDERS)}, not {kept_order!r}.")


def kept_documents(
    judgements: Sequence[DocumentJudgement], *, top_n: int | None = None, kept_order: KeptOrder = "retrieval"
) -> list[DocumentJudgement]:
    """The relevant documents; with `top_n`, only the best-scored `top_n` of them (ties and documents without a score
    go in their given order). "retrieval" keeps the given order, "score" puts the best first."""
    check_filter_settings(top_n, kept_order)
    kept = [j for j in judgements if j.relevant]
    by_score = sorted(kept, key=lambda j: -j.score if j.score is not None else math.inf)  # stable: ties keep order
    if top_n is not None:
        chosen = {id(j) for j in by_score[:top_n]}
        kept = [j for j in kept if id(j) in chosen]
    return sorted(kept, key=lambda j: -j.score if j.score is not None else math.inf) if kept_order == "score" else kept
