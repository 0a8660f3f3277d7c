"""Judging documents by the margins WiM wrote on them: what the document filters of the adapters keep.

`WiMDocumentCompressor` (LangChain) and `WiMNodePostprocessor` (LlamaIndex) read retrieved documents with
`merge_documents=False`, so every margin is about one document (a long document gets several). A document is
relevant when any margin on it is; its score is the best score of those margins. `top_n` keeps the best-scored,
like LlamaIndex's `LLMRerank`.

`hops > 1` judges the pieces the margins dropped again, given the ones kept (`follow_hops`): a piece whose reading,
after the kept pieces, raises the question's likelihood by at least `hop_threshold` nats per token is kept too, and
the next hop judges what is left given all kept so far (reading/hops.py). It finds the second hop of a two-hop
question, which says nothing about the question on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .backends.base import Backend
from .errors import WiMInputError
from .events import Margin
from .reading.hops import EvidenceLift

# The order of the kept documents: as retrieved (the default) or best score first.
KeptOrder = Literal["retrieval", "score"]
KEPT_ORDERS: tuple[str, ...] = ("retrieval", "score")
# Judging passes: the margins' (1) and at most MAX_HOPS - 1 evidence-lift passes after it.
MAX_HOPS = 8
# Judging passes when `hops` is not set, on a backend with prompt log-probabilities (elsewhere 1, the margins' alone):
# a second hop kept the same pieces on every needle task and both hops of far more two-hop tasks, on held-out seeds of
# the retrieval benchmark (docs/benchmarks.md, "Multi-hop judging").
DEFAULT_HOPS = 2
# The evidence lift (nats per question token) a piece needs to be kept by a later hop; fitted for the embedded SmolLM2
# on the retrieval benchmark's fit seeds (docs/benchmarks.md, "Multi-hop judging").
DEFAULT_HOP_THRESHOLD = 0.05


@dataclass(frozen=True)
class DocumentJudgement:
    """One document of a read list and the margins written on it (reading order)."""

    index: int  # the document's position in the list that was read
    margins: tuple[Margin, ...]
    hop: int | None = None  # the later hop (2, 3, ...) that kept it when its margins did not
    lift: float | None = None  # its evidence lift at the last hop that scored it (None: never scored)

    @property
    def relevant_margins(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]

    @property
    def relevant(self) -> bool:
        """Kept: a relevant margin on it, or a later hop kept it."""
        return self.hop is not None or any(m.relevant for m in self.margins)

    @property
    def score(self) -> float | None:
        """The best score of its relevant margins (None when the classification mode computes none, or when a later
        hop kept it: an evidence lift is not on the margins' scale, so `top_n` ranks those documents last)."""
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


def check_filter_settings(
    top_n: object, kept_order: object, hops: object = 1, hop_threshold: object = DEFAULT_HOP_THRESHOLD
) -> None:
    """`WiMInputError` for a `top_n` that is not a positive int (or None), an unknown `kept_order`, `hops` outside
    1..MAX_HOPS (None: the default) or a `hop_threshold` that is not a finite number."""
    bad_hops = not isinstance(hops, int) or isinstance(hops, bool) or not 1 <= hops <= MAX_HOPS
    if hops is not None and bad_hops:
        raise WiMInputError(f"hops must be an integer from 1 (margins only) to {MAX_HOPS}, not {hops!r}.")
    if (
        isinstance(hop_threshold, bool)
        or not isinstance(hop_threshold, int | float)
        or not math.isfinite(hop_threshold)
    ):
        raise WiMInputError(f"hop_threshold must be a finite number (nats per question token), not {hop_threshold!r}.")
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


def resolve_hops(hops: int | None, backend: Backend) -> int:
    """`hops` as set; None: DEFAULT_HOPS on a backend with prompt log-probabilities, else 1 (e.g. a llama.cpp server,
    where a later hop could not score)."""
    if hops is not None:
        return hops
    return DEFAULT_HOPS if backend.capabilities.scoring != "none" else 1


def follow_hops(
    judgements: Sequence[DocumentJudgement],
    texts: Sequence[str],
    backend: Backend,
    question: str,
    *,
    hops: int | None = None,
    hop_threshold: float = DEFAULT_HOP_THRESHOLD,
) -> list[DocumentJudgement]:
    """The judgements after `hops - 1` later hops (in the given order): each hop scores every document not yet kept by
    its evidence lift given the kept ones (`texts[j.index]` is what was read of document `j`) and keeps those at or
    above `hop_threshold`; it stops early when a hop keeps nothing new. With no document kept by the margins, the
    first later hop judges each against the question alone. `hops=None`: `resolve_hops`."""
    check_filter_settings(None, "retrieval", hops, hop_threshold)
    hops = resolve_hops(hops, backend)
    result = list(judgements)
    if hops == 1:
        return result
    evidence = EvidenceLift(backend, question)  # refuses a backend without prompt log-probabilities
    evidence.keep([texts[j.index] for j in result if j.relevant])
    for hop in range(2, hops + 1):
        # An empty document has nothing to be kept for (as judge_documents never keeps one).
        rest = [pos for pos, j in enumerate(result) if not j.relevant and texts[j.index].strip()]
        if not rest:
            break
        lifts = evidence.scores([texts[result[pos].index] for pos in rest])
        new = []
        for pos, lift in zip(rest, lifts, strict=True):
            kept = lift >= hop_threshold
            result[pos] = replace(result[pos], hop=hop if kept else None, lift=lift)
            if kept:
                new.append(texts[result[pos].index])
        if not new:
            break
        evidence.keep(new)
    return result
