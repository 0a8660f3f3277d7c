"""Judging margins: one strategy per classification mode, chosen once per run, each owning its state (a PMI
baseline cache, the margin prompts kept aside for `segment_pmi`, a classifier with its prompt cache)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..analysis import Analysis
from ..backends.base import Backend, PromptAside
from ..config import JUDGE_WEIGHTS, QUESTION_WEIGHT
from ..events import ModelCall
from ..results import Verdict
from ..verdicts import split_inline
from .classifier import MarginClassifier
from .judge_model import JudgeScorer, JudgeTerms
from .plan import Plan
from .scoring import MarginDraft, PMIScorer, QuestionPMIScorer, SegmentPMIScorer, lexical_score


@dataclass(frozen=True)
class Judgement:
    text: str
    verdict: Verdict
    reply: str | None = None  # the classifier's reply (same_model / auxiliary)
    score: float | None = None  # score-based modes
    data: dict[str, Any] | None = None  # an analysis note validated against its schema
    parse_error: str | None = None  # why it did not validate
    call: ModelCall | None = None  # the classifier's call (same_model / auxiliary)
    score_terms: dict[str, float] | None = None  # the terms a combined score was computed from (question_pmi)


class Judge(Protocol):
    """Judges a group of margins in one pass; `cache` holds the text read so far."""

    @property
    def generated_tokens(self) -> int:
        """Model tokens generated while judging (a classifier's replies), for the run's token counts."""
        ...

    # Whether `keep_prompt` wants the margin prompts computed at segment ends (copies are made only then).
    keeps_prompts: bool

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]: ...

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        """The margin prompt computed at a segment's end, offered for later scoring (`segment_pmi` and `question_pmi`
        keep it)."""

    def prefetch(self, cache: Any, segment_start: int, token_ids: Sequence[int]) -> None:
        """A server's margin row has ended while others still decode: work on it may start now (`segment_pmi`
        sends its scoring request). `judge` gives the same result whether or not this was called."""


class _NoPrefetch:
    def prefetch(self, cache: Any, segment_start: int, token_ids: Sequence[int]) -> None:
        pass


class _Stateless(_NoPrefetch):
    generated_tokens = 0
    keeps_prompts = False

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        pass


class NoteJudge(_Stateless):
    """Summary / analysis notes: all kept, each validated against the task's schema when it has one."""

    def __init__(self, task: Analysis) -> None:
        self.task = task

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        judged = []
        for d in drafts:
            data, error = self.task.parse(d.text)
            judged.append(Judgement(d.text, "unclassified", data=data, parse_error=error))
        return judged


class KeepAll(_Stateless):
    """classification="none": every margin kept, unjudged."""

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        return [Judgement(d.text, "unclassified") for d in drafts]


class InlineJudge(_Stateless):
    """classification="inline": the margin states its own verdict ("YES: ...")."""

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        return [Judgement(text, verdict) for verdict, text in (split_inline(d.text) for d in drafts)]


Scores = Callable[[Sequence[MarginDraft], Any], list[float]]


class ScoreJudge(_Stateless):
    """A score per margin, kept when it reaches the threshold."""

    def __init__(self, scores: Scores, threshold: float) -> None:
        self.scores = scores
        self.threshold = threshold

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        scores = self.scores(drafts, cache)
        return [
            Judgement(d.text, "yes" if s >= self.threshold else "no", score=s)
            for d, s in zip(drafts, scores, strict=True)
        ]


@dataclass
class SegmentPMIJudge:
    """classification="segment_pmi": how much the margin's own segment raised its likelihood. The margin prompt
    computed at the previous segment's end (kept as it was read) is reused as the baseline's prompt."""

    scorer: SegmentPMIScorer
    threshold: float
    generated_tokens: int = 0
    keeps_prompts: bool = True
    prompts: dict[int, PromptAside] = field(default_factory=dict)  # cache length -> margin prompt computed there

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        self.prompts[segment_end] = aside

    def prefetch(self, cache: Any, segment_start: int, token_ids: Sequence[int]) -> None:
        self.scorer.prefetch(cache, segment_start, token_ids, self.prompts)

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        scores = self.scorer.score(cache, drafts, self.prompts)
        last = max(d.segment_start for d in drafts)  # only the newest prompt is needed again (the next segment's)
        self.prompts = {k: a for k, a in self.prompts.items() if k > last}
        return ScoreJudge(lambda *_: scores, self.threshold).judge(drafts, cache)


@dataclass
class QuestionPMIJudge(_NoPrefetch):
    """classification="question_pmi": `segment_pmi` and how much the question raised the margin, combined
    (`QuestionPMITerms.combined`: grounding + weight * question). Keeps the margin prompts computed at segment ends,
    as `SegmentPMIJudge` does: the one at a margin's segment start for its grounding row, the one at its segment end
    for its question-free row."""

    scorer: QuestionPMIScorer
    threshold: float
    weight: float
    generated_tokens: int = 0
    keeps_prompts: bool = True
    prompts: dict[int, PromptAside] = field(default_factory=dict)

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        self.prompts[segment_end] = aside

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        terms = self.scorer.terms(cache, drafts, self.prompts)
        last = max(d.segment_start for d in drafts)
        self.prompts = {k: a for k, a in self.prompts.items() if k > last}
        judged = []
        for d, t in zip(drafts, terms, strict=True):
            s = t.combined(self.weight)
            parts = {"grounding": t.grounding, "question": t.question}
            judged.append(Judgement(d.text, "yes" if s >= self.threshold else "no", score=s, score_terms=parts))
        return judged


@dataclass
class ModelJudge(_NoPrefetch):
    """classification="judge": `question_pmi`'s two terms from the main model and the judge model's two numbers
    (`judge_model.JudgeScorer`), combined (`JudgeTerms.combined`). Keeps the margin prompts as `QuestionPMIJudge`."""

    scorer: QuestionPMIScorer
    model: JudgeScorer
    threshold: float
    weights: tuple[float, float, float]
    generated_tokens: int = 0
    keeps_prompts: bool = True
    prompts: dict[int, PromptAside] = field(default_factory=dict)

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        self.prompts[segment_end] = aside

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        main = self.scorer.terms(cache, drafts, self.prompts)
        last = max(d.segment_start for d in drafts)
        self.prompts = {k: a for k, a in self.prompts.items() if k > last}
        judged = []
        for d, t, (verdict, relevance) in zip(drafts, main, self.model.terms([d.text for d in drafts]), strict=True):
            terms = JudgeTerms(t.grounding, t.question, verdict, relevance)
            s = terms.combined(self.weights)
            kept: Verdict = "yes" if s >= self.threshold else "no"
            judged.append(Judgement(d.text, kept, score=s, score_terms=terms.as_dict()))
        return judged


class ClassifierJudge(_NoPrefetch):
    """A model's YES/NO reply (same_model / auxiliary), with the call recorded for tracers."""

    keeps_prompts = False

    def __init__(self, classifier: MarginClassifier, check: Callable[[], None]) -> None:
        self.classifier = classifier
        self.check = check

    @property
    def generated_tokens(self) -> int:
        return self.classifier.generated_tokens

    def keep_prompt(self, segment_end: int, aside: PromptAside) -> None:
        pass

    def judge(self, drafts: Sequence[MarginDraft], cache: Any) -> list[Judgement]:
        replies = self.classifier.classify([d.text for d in drafts], self.check)
        return [
            Judgement(d.text, verdict, reply, call=self._call(d.text, reply))
            for d, (verdict, reply) in zip(drafts, replies, strict=True)
        ]

    def _call(self, margin: str, reply: str) -> ModelCall:
        ids = self.classifier.prompt_ids(margin)
        backend = self.classifier.backend
        return ModelCall(
            model=backend.name,
            prompt=backend.decode(ids),
            prompt_tokens=len(ids),
            output_tokens=len(backend.encode_text(reply)),
        )


def judge_for(
    plan: Plan,
    backend: Backend,
    classifier: Backend | None,
    template: str,
    check: Callable[[], None],
    judge: Backend | None = None,
) -> Judge:
    """The judge of a run: from its analysis task or classification mode. A model judge (and its prompt cache) is
    built here, once per run; `classifier` is the auxiliary model of "auxiliary", `judge` the one of "judge" (both
    loaded once per `WiM`)."""
    cfg = plan.config
    mode = cfg.classification
    if plan.analysis is not None:
        return NoteJudge(plan.analysis)
    if mode == "none":
        return KeepAll()
    if mode == "inline":
        return InlineJudge()
    if mode == "lexical":
        return ScoreJudge(
            lambda drafts, _: [lexical_score(d.text, d.segment_text, plan.question) for d in drafts], cfg.threshold
        )
    if mode == "segment_pmi":
        return SegmentPMIJudge(SegmentPMIScorer(backend, plan.margin_prompt_ids), cfg.threshold)
    if mode == "question_pmi":
        free = QuestionPMIScorer(
            backend, plan.margin_prompt_ids, plan.question_free_prompt_ids, plan.margin_head_length
        )
        return QuestionPMIJudge(free, cfg.threshold, QUESTION_WEIGHT)
    if mode == "judge":
        assert judge is not None  # planning refuses "judge" without a judge model
        free = QuestionPMIScorer(
            backend, plan.margin_prompt_ids, plan.question_free_prompt_ids, plan.margin_head_length
        )
        return ModelJudge(free, JudgeScorer(judge, plan.question), cfg.threshold, JUDGE_WEIGHTS)
    if mode == "pmi":
        pmi = PMIScorer(backend, plan.head_ids, plan.margin_prompt_ids)
        return ScoreJudge(lambda drafts, _: pmi.score(drafts), cfg.threshold)
    judge_backend = classifier if mode == "auxiliary" else backend
    assert judge_backend is not None  # planning refuses "auxiliary" without a classifier
    model_judge = MarginClassifier(
        judge_backend, judge_backend.chat_frame(), template, plan.question, cfg.classifier_max_new_tokens
    )
    if cfg.scored:  # "calibrated": the classifier's YES/NO log-odds as a score
        return ScoreJudge(lambda drafts, _: model_judge.calibrated_scores([d.text for d in drafts]), cfg.threshold)
    return ClassifierJudge(model_judge, check)
