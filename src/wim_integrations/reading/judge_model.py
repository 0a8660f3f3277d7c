"""classification="judge": a second, small model's numbers about each margin (the paper's auxiliary classifier).

A model of a few hundred million parameters (Gemma 3 270M, SmolLM2-135M) cannot be trusted to judge in words: its
YES/NO replies hardly depend on the margin (docs/benchmarks.md, `same_model` and `calibrated`). So the judge is
asked for numbers it computes, on plain-text prompts (a base model has no chat template; BOS first where the model
has one):

- `verdict`: log P(yes) - log P(no) of the token after "Question: {question}\\nNote: {margin}\\nDoes the note answer
  the question? Answer (Yes or No):", minus the same for a content-free note (contextual calibration: the judge's
  prior for "Yes" on this question is taken out). Yes/no are each the sum over their spellings' first tokens.
- `relevance`: the judge's PMI of the margin and the question: mean log P(margin | "Question: {question}\\nNote:")
  minus mean log P(margin | "Note:").

Each group of margins costs one packed `score_rows` pass on the judge model (two rows per margin, with only the
logits the terms use computed); the content-free note's log-odds are computed once per run. The judge never sees the
document: grounding comes from the main model (`question_pmi`'s terms), and `JudgeTerms.combined` joins them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends.base import Backend
from .scoring import CONTENT_FREE_MARGIN, logsumexp

_YES_WORDS = (" Yes", " yes", " YES", "Yes", "yes")
_NO_WORDS = (" No", " no", " NO", "No", "no")
_ASK = "\nDoes the note answer the question? Answer (Yes or No):"


@dataclass(frozen=True)
class JudgeTerms:
    """The numbers a `judge` score is computed from (nats; the main model's two, then the judge's two)."""

    grounding: float  # main model: segment_pmi (what the margin's own segment raised)
    question: float  # main model: the question's lift of the margin (question_pmi's second term)
    verdict: float  # judge: calibrated yes/no log-odds
    relevance: float  # judge: PMI of margin and question

    def combined(self, weights: tuple[float, float, float]) -> float:
        """grounding + w_q * question + w_v * verdict + w_r * relevance (config.JUDGE_WEIGHTS, fitted per pair of
        models)."""
        w_q, w_v, w_r = weights
        return self.grounding + w_q * self.question + w_v * self.verdict + w_r * self.relevance

    def as_dict(self) -> dict[str, float]:
        return {
            "grounding": self.grounding,
            "question": self.question,
            "verdict": self.verdict,
            "relevance": self.relevance,
        }


def bos_ids(backend: Backend) -> list[int]:
    """The model's begin-of-sequence token where its tokenizer names one (GGUF metadata), else nothing."""
    bos = getattr(getattr(backend, "tokens", None), "bos_token", None)
    return backend.encode_template(bos) if bos else []


class JudgeScorer:
    """The judge model's two numbers for the margins of one run (one question). Not thread-safe: one per run."""

    def __init__(self, backend: Backend, question: str) -> None:
        # WiM refused a judge whose backend cannot score token rows when it was built (engine._judge_backend).
        self.backend = backend
        bos = bos_ids(backend)
        self._asked = bos + backend.encode_text(f"Question: {question}\nNote:")
        self._unasked = bos + backend.encode_text("Note:")
        self._ask = backend.encode_text(_ASK)
        self._yes, self._no = self._verdict_tokens()
        self._baseline: float | None = None  # the content-free note's log-odds, once per run

    def _verdict_tokens(self) -> tuple[list[int], list[int]]:
        first = self.backend.encode_text
        yes = {first(w)[0] for w in _YES_WORDS}
        no = {first(w)[0] for w in _NO_WORDS}
        return sorted(yes - no), sorted(no - yes)

    def _note(self, margin: str) -> list[int]:
        return self.backend.encode_text(" " + margin.strip())

    def terms(self, margins: Sequence[str]) -> list[tuple[float, float]]:
        """(verdict, relevance) per margin; an empty margin says nothing: (0, 0)."""
        live = [m for m in margins if m.strip()]
        if not live:
            return [(0.0, 0.0) for _ in margins]
        notes = [self._note(m) for m in live]
        rows: list[list[int]] = []
        tails: list[int] = []
        for note in notes:
            rows += [self._asked + note + self._ask, self._asked + note, self._unasked + note]
            tails += [0, len(note), len(note)]
        if self._baseline is None:
            rows.append(self._asked + self._note(CONTENT_FREE_MARGIN) + self._ask)
            tails.append(0)
        b = self.backend
        scores = b.score_rows(b.new_cache(), rows, next_ids=[*self._yes, *self._no], tails=tails)
        if self._baseline is None:
            self._baseline = self._log_odds(scores[-1].next_logprobs)
        out = iter(
            (
                self._log_odds(scores[3 * i].next_logprobs) - self._baseline,
                _mean_tail(scores[3 * i + 1].token_logprobs, len(n))
                - _mean_tail(scores[3 * i + 2].token_logprobs, len(n)),
            )
            for i, n in enumerate(notes)
        )
        return [next(out) if m.strip() else (0.0, 0.0) for m in margins]

    def _log_odds(self, next_lp: dict[int, float]) -> float:
        return logsumexp([next_lp[t] for t in self._yes]) - logsumexp([next_lp[t] for t in self._no])


def _mean_tail(logprobs: Sequence[float], n: int) -> float:
    tail = logprobs[-n:]
    value = sum(tail) / len(tail)
    if math.isnan(value):  # a backend left a needed value out: a bug, not a score
        raise RuntimeError("the judge's backend returned no log P for a margin token")
    return value
