"""Settings of one WiM run. Everything here can change per call; the model is fixed per `WiM` object."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from typing_extensions import Self

from .errors import SettingsError

ClassificationMode = Literal[
    "segment_pmi",
    "question_pmi",
    "judge",
    "pmi",
    "calibrated",
    "lexical",
    "same_model",
    "auxiliary",
    "inline",
    "none",
]
MarginScope = Literal["segment", "so_far"]
MarginStop = Literal["sentence", "line", "eos"]  # see reading/stopping.py
MarginMode = Literal["free", "quote"]  # see backends/span.py

# Score-based modes (relevance.py) and their default thresholds, chosen on the quick preset (docs/benchmarks.md,
# "Margin relevance", shows how each separates the ground truth).
SCORE_MODES = ("segment_pmi", "question_pmi", "judge", "pmi", "calibrated", "lexical")
DEFAULT_THRESHOLDS: dict[str, float] = {
    "segment_pmi": 0.15,
    "question_pmi": -0.2,
    "judge": -0.2,
    "pmi": 0.5,
    "calibrated": 0.0,
    "lexical": 0.5,
}
# question_pmi's score: grounding + QUESTION_WEIGHT * question lift (reading/scoring.py, QuestionPMITerms), fitted
# with its threshold on the quick preset for the embedded SmolLM2 (`python -m benchmarks.question_sweep`): the
# question raises margins that restate it far more than margins that state the fact, so the weight is negative.
QUESTION_WEIGHT = -0.75
# judge's score: grounding + w_q * question + w_v * verdict + w_r * relevance (reading/judge_model.py, JudgeTerms):
# the main model's question_pmi terms and the judge model's two numbers, fitted with the threshold on the quick preset
# for the embedded SmolLM2 judged by Gemma 3 270M (`python -m benchmarks.judge_sweep`, docs/benchmarks.md).
JUDGE_WEIGHTS: tuple[float, float, float] = (-0.75, 0.0, -0.15)


def _not_bool(value: object) -> object:
    # pydantic reads True as 1: margin_batch_size=True would silently mean the step-by-step loop.
    if isinstance(value, bool):
        raise ValueError(f"a whole number is needed, not {value!r}")
    return value


# An int setting that refuses bools (the validator is metadata, so adapters deriving fields from these keep it).
Count = BeforeValidator(_not_bool)


def settings_error(owner: str, exc: ValidationError) -> SettingsError:
    """pydantic's `ValidationError` as the library's `SettingsError`: each problem with its field and value."""
    problems: list[str] = []
    for e in exc.errors(include_url=False):
        loc = ".".join(map(str, e["loc"]))
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, SettingsError):  # a nested settings model said it already: its problems, under `loc`
            problems += [f"{loc}.{p}" if loc else p for p in inner.problems]
        elif not loc:  # a rule across fields: its message says it all
            problems.append(str(inner) if inner is not None else e["msg"])
        elif e["type"] in ("missing", "extra_forbidden"):
            problems.append(f"{loc}: {e['msg']}")
        else:
            shown = repr(e["input"])
            msg = str(inner) if inner is not None else e["msg"]
            problems.append(f"{loc}: {msg} (got {shown[:80]}{'...' if len(shown) > 80 else ''})")
    return SettingsError(owner, problems)


class _Settings(BaseModel):
    """A settings model whose validation errors are `SettingsError`s (a `WiMInputError`), not pydantic's."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise settings_error(type(self).__name__, exc) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise settings_error(cls.__name__, exc) from None

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise settings_error(cls.__name__, exc) from None


class SamplingConfig(_Settings):
    """Decoding settings. Greedy (the default) is deterministic; set `do_sample=True` to sample."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: Annotated[int, Count] = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0)
    seed: Annotated[int | None, Count] = Field(
        None, description="seed for sampling; None draws from torch's global generator"
    )


class WiMConfig(_Settings):
    """How WiM reads a context.

    `segment_tokens=None` sizes segments for the model: min(4096, max(256, window // 8)) tokens, 4096 being
    the paper's choice for 128k-token models.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    segment_tokens: Annotated[int | None, Count] = Field(None, ge=1, description="segment budget in model tokens")
    margin_max_new_tokens: Annotated[int, Count] = Field(
        32,
        ge=1,
        description="max new tokens per margin (with margin_stop='sentence' most margins end before it; measured in "
        "docs/benchmarks.md, 'Margin stop rules')",
    )
    answer_max_new_tokens: Annotated[int, Count] = Field(256, ge=1, description="max new tokens of the answer")
    answer_stop: tuple[str, ...] = Field(
        (), description="stop sequences of the answer: decoding ends at the first one, which the answer leaves out"
    )
    classification: ClassificationMode = Field(
        "segment_pmi",
        description="how margins are judged (default 'segment_pmi'; on a model with sliding-window layers, where it "
        "cannot run, the default falls back to 'pmi'): scored from the model's probabilities ('segment_pmi', "
        "'question_pmi': segment_pmi combined with how much the question raised the margin, 'judge': question_pmi's "
        "terms combined with a second small model's numbers (WiM(judge=...)), 'pmi', 'calibrated') or "
        "the text ('lexical') and kept at or above relevance_threshold; a parsed YES/NO reply ('same_model', "
        "'auxiliary', 'inline'); or every margin kept ('none')",
    )
    relevance_threshold: float | None = Field(
        None, description="score-based modes keep margins scoring at least this; None: the mode's default"
    )
    margin_stop: MarginStop = Field(
        "sentence",
        description="when a margin is complete besides the model's stop token and margin_max_new_tokens: 'sentence' "
        "(its first sentence or line ends), 'line' (its first line ends) or 'eos' (no rule). Notes of a summary or "
        "analysis default to 'eos'. Measured in docs/benchmarks.md, 'Margin stop rules'.",
    )
    margin_scope: MarginScope = Field(
        "segment",
        description="what a margin is written about: 'segment' (the part just read, with the earlier text in view) or "
        "'so_far' (everything read so far)",
    )
    margin_mode: MarginMode = Field(
        "free",
        description="how a margin is written: 'free' (the model's own words) or 'quote' (decoded under a constraint "
        "that lets it only copy a contiguous span of its own segment's tokens, so it cannot state what the segment "
        "does not say; transformers and llama.cpp in process, refused on servers); docs/architecture.md, 'Quoted "
        "margins'",
    )
    quote_min_tokens: Annotated[int, Count] = Field(
        4,
        ge=1,
        description="with margin_mode='quote': the fewest tokens a quote has before the model may end it (it ends "
        "earlier only where its segment ends)",
    )
    quote_loose_start: bool = Field(
        True,
        description="with margin_mode='quote': the quote's first token may also be the space-less form of a segment "
        "token that starts with a space ('The' for the ' The' of a sentence inside the text), as a reply begins; "
        "the text is still a piece of the segment. False: the segment's tokens exactly",
    )
    classifier_max_new_tokens: Annotated[int, Count] = Field(
        8, ge=1, description="max new tokens of a classifier reply"
    )
    keep_unknown_verdicts: bool = Field(
        False, description="treat margins whose verdict could not be parsed as relevant instead of dropping them"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    margin_batch_size: Annotated[int, Count] = Field(
        8,
        ge=1,
        description="margins of this many segments are decoded (and classified) together in one batch over the "
        "shared cache, each streaming its own events live as it is decoded; 1 is the step-by-step loop (each margin "
        "written before the next segment is read). Same results either way (greedy).",
    )
    overlap: bool | None = Field(
        None,
        description="decode the margins of the segments already read while the next segment is prefilled (the "
        "paper's overlap): in the same batches on llama.cpp in process; on vLLM and SGLang each margin request is sent "
        "once its own prefix is cached, and the engine batches it with the rest's prefill. None: the backend's default "
        "(off everywhere: grouped decoding measured faster on this CPU, docs/benchmarks.md 'The paper's overlap'); "
        "True where the backend cannot is refused",
    )
    overlap_chunk_tokens: Annotated[int, Count] = Field(
        64,
        ge=1,
        description="with overlap: a segment is prefilled in pieces of this many tokens, each batched with one token "
        "of every running margin",
    )
    merge_documents: bool = Field(
        True,
        description="short documents of a list share a segment (True), or every document starts a segment of its own "
        "so each margin is about one document (False; a document longer than a segment is still cut). The document "
        "filters (WiMDocumentCompressor, WiMNodePostprocessor) judge each document and default to False",
    )
    reuse_document_cache: bool = Field(
        True, description="start from the WiM's document cache when it holds this context (WiM(document_cache=...))"
    )

    @model_validator(mode="after")
    def _check_quote(self) -> WiMConfig:
        if self.margin_mode == "quote" and self.classification == "inline":
            raise ValueError(
                "margin_mode='quote' cannot be used with classification='inline' (an inline margin starts with its "
                "YES#/NO# verdict, which a quote of the segment cannot write); pick another classification mode"
            )
        return self

    @model_validator(mode="after")
    def _check_threshold(self) -> WiMConfig:
        t = self.relevance_threshold
        if t is None:
            return self
        if not self.scored:
            raise ValueError(
                f"relevance_threshold applies to the score-based classification modes {SCORE_MODES}, not to "
                f"classification={self.classification!r}; drop it or pick a score-based mode"
            )
        if not math.isfinite(t):
            raise ValueError(f"relevance_threshold must be a finite number, not {t}")
        if self.classification == "lexical" and not 0.0 <= t <= 1.0:
            raise ValueError(
                f"relevance_threshold={t} is out of range for 'lexical' (a share of names and numbers found): "
                "use a value between 0 and 1"
            )
        return self

    @property
    def scored(self) -> bool:
        """Whether margins are judged by a score and a threshold (rather than a parsed reply)."""
        return self.classification in SCORE_MODES

    @property
    def threshold(self) -> float:
        """The relevance threshold in force for a score-based mode."""
        if self.relevance_threshold is not None:
            return self.relevance_threshold
        return DEFAULT_THRESHOLDS[self.classification]

    def with_updates(self, **changes: object) -> WiMConfig:
        """A copy with `changes` applied and validated."""
        # Fields never set stay unset, so defaults that depend on the model (classification) still apply.
        return WiMConfig.model_validate({**self.model_dump(exclude_unset=True), **changes})
