"""Relevance of margins as numbers computed from the model (or the text), not parsed from a reply.

Every score-based mode gives each margin a `score` (higher: more relevant) and keeps the margins whose score reaches
`WiMConfig.relevance_threshold` (or the mode's default below). Measured against the benchmark's ground truth in
docs/benchmarks.md ("Margin relevance"); how each works and where it fails in docs/architecture.md.

- `pmi`: how much the text read raised the margin's likelihood: the mean log P of the margin's tokens given the
  context read so far (collected while the margin is decoded, free) minus the same without any text (one short packed
  pass over the margin prompt alone, shared by every margin of the run). An invented margin is as likely without the
  text as with it (about 0); a margin copying what was read scores well above 0.
- `segment_pmi`: how much the segment just read raised the margin's likelihood: the same first term minus the mean
  log P of the margin given the text *before* its segment (one packed pass over the margins of a group, each row seeing
  the cache up to its previous segment; the margin prompt there is taken from the previous margin's, not recomputed).
  A margin repeating an earlier part, or invented, scores about 0; one stating what this segment says scores above.
- `question_pmi`: `segment_pmi` (grounding) combined with how much the question raised the margin's likelihood: the
  same first term minus the mean log P of the margin given the same text and the margin prompt *without the
  question* (its question-free head taken from the margin prompt computed at the segment's end). Both baselines are
  rows of one packed pass. Score: grounding + w * question, w fitted per model (config.QUESTION_WEIGHT; negative
  for the embedded SmolLM2, whose margins the question raises most when they only restate the question).
- `calibrated`: the classifier prompt's first reply token, log P(yes) - log P(no), minus the same for a content-free
  margin ("Nothing relevant.") on the same question: the model's prior for "yes" is taken out (contextual calibration).
- `lexical`: the share of the margin's names and numbers (capitalised words, digits; those of the question left out)
  found in the segment the margin was written after. No model call.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..backends.base import Backend, PackedRow, PromptAside, RowScores, local_kv_view

CONTENT_FREE_MARGIN = "Nothing relevant."


@dataclass(frozen=True)
class MarginDraft:
    """A margin as written, before it is judged."""

    text: str
    token_ids: Sequence[int]
    logprobs: Sequence[float]  # log P of each token given the context read so far, from its decoding
    segment_text: str
    segment_start: int = 0  # cache length before the segment (the end of the previous one)
    segment_end: int = 0  # cache length after the segment


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class PMIScorer:
    """Mean log P(margin | text read, prompt) - mean log P(margin | prompt alone). One per run: the prompt without
    any text is prefilled once, and each group of margins is scored in one packed pass on top of it."""

    def __init__(self, backend: Backend, head_ids: Sequence[int], margin_prompt_ids: Sequence[int]) -> None:
        if not margin_prompt_ids:
            raise ValueError("the margin prompt is empty")
        self.backend = backend
        # Everything but the prompt's last token goes in the cache; that token opens each scored row, so its logits
        # (which predict the margin's first token) are computed per row, exactly as when the margin was decoded.
        self._prefix = [*head_ids, *margin_prompt_ids[:-1]]
        self._bridge = margin_prompt_ids[-1]
        self._cache: Any = None

    def score(self, drafts: Sequence[MarginDraft]) -> list[float]:
        scored = [d for d in drafts if d.token_ids]
        if not scored:
            return [0.0 for _ in drafts]
        if self._cache is None:
            self._cache = self.backend.new_cache()
            self.backend.prefill(self._cache, self._prefix)
        rows = [[self._bridge, *d.token_ids] for d in scored]
        tails = [len(d.token_ids) for d in scored]
        return _lift(drafts, (s.token_logprobs for s in self.backend.score_rows(self._cache, rows, tails=tails)))


class SegmentPMIScorer:
    """Mean log P(margin | text through its segment) - mean log P(margin | text before its segment)."""

    def __init__(self, backend: Backend, margin_prompt_ids: Sequence[int]) -> None:
        self.backend = backend
        self.prompt = list(margin_prompt_ids)
        self._ahead: dict[tuple[int, tuple[int, ...]], Future[list[RowScores]]] = {}

    def score(self, cache: Any, drafts: Sequence[MarginDraft], asides: Mapping[int, PromptAside]) -> list[float]:
        """`cache` holds at least every draft's segment start; `asides` maps a cache length to the margin prompt
        computed there (reused, but for its last token, so each row's logits start inside the row). A margin
        prefetched as written takes its scores from there; the others are scored here, in one batch."""
        scored = [d for d in drafts if d.token_ids]
        ahead = [self._ahead.pop((d.segment_start, tuple(d.token_ids)), None) for d in scored]
        rest = [d for d, f in zip(scored, ahead, strict=True) if f is None]
        computed = iter(
            self.backend.score_rows(
                cache,
                [self.before_row(d.segment_start, d.token_ids, asides) for d in rest],
                tails=[len(d.token_ids) for d in rest],
            )
            if rest
            else []
        )
        # A prefetched request ends within the server client's timeout, like one sent here.
        before = [f.result()[0] if f is not None else next(computed) for f in ahead]
        return _lift(drafts, _margin_logprobs(before, scored))

    def prefetch(
        self, cache: Any, segment_start: int, token_ids: Sequence[int], asides: Mapping[int, PromptAside]
    ) -> None:
        """Send one margin's baseline row now, on a thread of its own (a server scores it while other margins
        still decode); `score` takes the result for the same margin. A failure is raised there."""
        key = (segment_start, tuple(token_ids))
        if not token_ids or key in self._ahead:
            return
        row = self.before_row(segment_start, token_ids, asides)
        future: Future[list[RowScores]] = Future()

        def run() -> None:
            try:
                future.set_result(self.backend.score_rows(cache, [row], tails=[len(token_ids)]))
            except BaseException as e:  # handed to `score`
                future.set_exception(e)

        self._ahead[key] = future
        threading.Thread(target=run, name="wim-score-ahead", daemon=True).start()

    def before_row(self, segment_start: int, token_ids: Sequence[int], asides: Mapping[int, PromptAside]) -> PackedRow:
        """The margin after the text before its segment and the margin prompt (taken from `asides` where there)."""
        return PackedRow(
            segment_start,
            [*self.prompt, *token_ids],
            _head(self.backend, asides.get(segment_start), len(self.prompt) - 1),
        )


@dataclass(frozen=True)
class QuestionPMITerms:
    """The two terms of a `question_pmi` score (nats per token)."""

    grounding: float  # the segment_pmi score: what the margin's own segment raised
    question: float  # mean log P(margin | text, prompt with the question) - the same without the question

    def combined(self, weight: float) -> float:
        """grounding + weight * question. The weight is signed and fitted per model (config.QUESTION_WEIGHT): on
        the embedded SmolLM2 it is negative, because what the question raises most is a margin that restates the
        question ("The secret code for the jade vault is a code that..."), not the fact (docs/benchmarks.md)."""
        return self.grounding + weight * self.question


class QuestionPMIScorer:
    """`segment_pmi` and the question's lift of the margin, from one packed pass: per margin a row after the text
    before its segment (as `SegmentPMIScorer`) and a row after the text through its segment with the margin prompt
    without the question (its head reused from the margin prompt computed at the segment's end)."""

    def __init__(
        self, backend: Backend, margin_prompt_ids: Sequence[int], free_prompt_ids: Sequence[int], head_length: int
    ) -> None:
        if list(free_prompt_ids[:head_length]) != list(margin_prompt_ids[:head_length]):
            raise ValueError("the question-free prompt must start with the margin prompt's head")
        if len(free_prompt_ids) <= head_length:
            raise ValueError("the question-free prompt needs a token after the shared head (the chat suffix)")
        self.segment = SegmentPMIScorer(backend, margin_prompt_ids)
        self.backend = backend
        self.free_prompt = list(free_prompt_ids)
        self.head_length = head_length

    def terms(
        self, cache: Any, drafts: Sequence[MarginDraft], asides: Mapping[int, PromptAside]
    ) -> list[QuestionPMITerms]:
        """`cache` holds at least every draft's segment end; `asides` as for `SegmentPMIScorer.score`, and the margin
        prompts computed at the drafts' segment ends (their question-free heads are reused)."""
        scored = [d for d in drafts if d.token_ids]
        before = [self.segment.before_row(d.segment_start, d.token_ids, asides) for d in scored]
        free = [
            PackedRow(
                d.segment_end,
                [*self.free_prompt, *d.token_ids],
                _head(self.backend, asides.get(d.segment_end), self.head_length),
            )
            for d in scored
        ]
        tails = [len(d.token_ids) for d in scored]
        rows = self.backend.score_rows(cache, [*before, *free], tails=tails + tails)
        grounding = _lift(drafts, _margin_logprobs(rows[: len(scored)], scored))
        question = _lift(drafts, _margin_logprobs(rows[len(scored) :], scored))
        return [QuestionPMITerms(g, q) for g, q in zip(grounding, question, strict=True)]


def _head(backend: Backend, aside: PromptAside | None, n_tokens: int) -> PromptAside | None:
    """At most the first `n_tokens` of a prompt computed aside (None where there is none): a row computes the rest."""
    if aside is None or n_tokens <= 0:
        return None
    if len(aside.prompt_ids) <= n_tokens:
        return aside
    kv = local_kv_view(backend)  # asides only exist where the backend keeps keys/values here
    assert kv is not None
    return kv.aside_head(aside, n_tokens)


def _margin_logprobs(rows: Sequence[RowScores], drafts: Sequence[MarginDraft]) -> Iterator[Sequence[float]]:
    """The log P of each draft's own tokens, the last ones of its row."""
    return (s.token_logprobs[-len(d.token_ids) :] for s, d in zip(rows, drafts, strict=True))


def _lift(drafts: Sequence[MarginDraft], baselines: Iterator[Sequence[float]]) -> list[float]:
    """Per draft: mean log P of its tokens as decoded minus the mean of the same tokens' log P in `baselines` (one per
    non-empty draft, in order). An empty margin says nothing: 0, as for a margin the text did not change."""
    return [_mean(d.logprobs) - _mean(next(baselines)) if d.token_ids else 0.0 for d in drafts]


_ENTITY = re.compile(r"\d+(?:[.,:/-]\d+)*|[A-Z][\w'’-]*")
# Capitalised words that open sentences or are too common to name anything specific.
_COMMON = frozenset(
    [
        "A",
        "An",
        "And",
        "As",
        "At",
        "But",
        "By",
        "For",
        "From",
        "He",
        "Her",
        "His",
        "I",
        "If",
        "In",
        "It",
        "Its",
        "No",
        "Not",
        "Nothing",
        "Of",
        "On",
        "Or",
        "She",
        "So",
        "That",
        "The",
        "Their",
        "Then",
        "There",
        "These",
        "They",
        "This",
        "To",
        "Was",
        "We",
        "What",
        "When",
        "Where",
        "Which",
        "Who",
        "Why",
        "With",
        "Yes",
        "You",
        "Margin",
        "Note",
        "Part",
        "Question",
        "Answer",
        "Text",
    ]
)


def lexical_terms(text: str, question: str) -> list[str]:
    """The names and numbers a margin states, minus those of the question and common capitalised words."""
    asked = {w.lower() for w in _ENTITY.findall(question)} | {w.lower() for w in re.findall(r"\w+", question)}
    return [w for w in _ENTITY.findall(text) if w not in _COMMON and w.lower() not in asked]


def lexical_score(margin: str, segment_text: str, question: str) -> float:
    """Share of the margin's names and numbers found in its segment (0 when it states none)."""
    terms = lexical_terms(margin, question)
    if not terms:
        return 0.0
    found = sum(1 for w in terms if re.search(r"(?<!\w)" + re.escape(w) + r"(?!\w)", segment_text))
    return found / len(terms)


def logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
