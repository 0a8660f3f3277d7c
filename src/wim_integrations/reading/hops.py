"""Judging retrieved pieces given the ones already kept: the later hops of the document filters (issue 26).

A per-document filter judges each piece against the question alone, so the second hop of a two-hop question ("Mary
lives in the town of T", asked "who received the compass, and in which town does that person live?") looks
irrelevant on its own and is dropped. After the margins' pass has kept some pieces, each later hop scores every piece
not yet kept by its *evidence lift*: how much reading it, after the kept pieces, raises the question's likelihood,

    mean log P(question | kept pieces, piece) - mean log P(question | kept pieces)

over the question's tokens (unsupervised passage re-ranking, Sachan et al. 2022, conditioned on the evidence kept so
far). Only the question's tokens are scored, so a piece that merely resembles the kept text scores about 0. The kept
pieces are prefilled once, in retrieval order, in a cache of their own (a hop that keeps more appends them), and the
pieces of a hop are scored as packed rows on top of it in one pass, with one more row without any piece (the
baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..backends.base import Backend
from ..errors import WiMInputError

# What joins the pieces and what comes before the question: the plain-reader layout the retrieval benchmark uses.
PIECE_SEPARATOR = "\n\n"
QUESTION_LABEL = "\n\nQuestion:"


def check_scoring(backend: Backend) -> None:
    """`WiMInputError` when `backend` has no prompt log-probabilities (later hops score with them)."""
    if backend.capabilities.scoring == "none":
        raise WiMInputError(
            "hops > 1 scores pieces from the model's prompt log-probabilities, which this backend does not return "
            "(e.g. a llama.cpp server); use hops=1 on it."
        )


class EvidenceLift:
    """The evidence lift of pieces given the pieces kept so far, for one question (one per filter call)."""

    def __init__(self, backend: Backend, question: str) -> None:
        check_scoring(backend)
        self.backend = backend
        self._question = backend.encode_text(" " + question)
        self._label = backend.encode_text(QUESTION_LABEL)
        self._separator = backend.encode_text(PIECE_SEPARATOR)
        self._cache: Any = backend.new_cache()
        backend.prefill(self._cache, backend.encode_template(backend.chat_frame().prefix))
        self.kept: list[str] = []

    def keep(self, pieces: Sequence[str]) -> None:
        """Append `pieces` to the evidence (prefilled once: later hops score on top of them)."""
        ids: list[int] = []
        for text in pieces:
            ids += [*self.backend.encode_text(text), *self._separator]
        if ids:
            self.backend.prefill(self._cache, ids)
        self.kept.extend(pieces)

    def scores(self, pieces: Sequence[str]) -> list[float]:
        """The evidence lift of each of `pieces` (nats per question token), in one packed pass."""
        if not pieces:
            return []
        q = self._question
        rows = [[*self.backend.encode_text(p), *self._label, *q] for p in pieces] + [[*self._label, *q]]
        scored = self.backend.score_rows(self._cache, rows, tails=[len(q)] * len(rows))
        *with_piece, alone = (sum(s.token_logprobs[-len(q) :]) / len(q) for s in scored)
        return [v - alone for v in with_piece]
