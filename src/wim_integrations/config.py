"""Settings of one WiM run. Everything here can change per call; the model is fixed per `WiM` object."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ClassificationMode = Literal["same_model", "auxiliary", "inline", "none"]


class SamplingConfig(BaseModel):
    """Decoding settings. Greedy (the default) is deterministic; set `do_sample=True` to sample."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = Field(None, description="seed for sampling; None draws from torch's global generator")


class WiMConfig(BaseModel):
    """How WiM reads a context.

    `segment_tokens=None` sizes segments for the model: min(4096, max(256, window // 8)) tokens, 4096 being
    the paper's choice for 128k-token models.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    segment_tokens: int | None = Field(None, ge=1, description="segment budget in model tokens")
    margin_max_new_tokens: int = Field(64, ge=1, description="max new tokens per margin")
    answer_max_new_tokens: int = Field(256, ge=1, description="max new tokens of the answer")
    classification: ClassificationMode = Field(
        "same_model",
        description="how margins are judged relevant: same_model (a classification prompt), auxiliary (the same on "
        "another model), inline (the margin starts with YES#/NO#) or none (keep every margin)",
    )
    classifier_max_new_tokens: int = Field(8, ge=1, description="max new tokens of a classifier reply")
    keep_unknown_verdicts: bool = Field(
        False, description="treat margins whose verdict could not be parsed as relevant instead of dropping them"
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    margin_batch_size: int = Field(
        1,
        ge=1,
        description="margins of this many segments are decoded (and classified) together in one batch over the "
        "shared cache; 1 is the step-by-step loop. Larger groups are faster; events then arrive per group.",
    )
    reuse_document_cache: bool = Field(
        True, description="start from the WiM's document cache when it holds this context (WiM(document_cache=...))"
    )

    def with_updates(self, **changes: object) -> WiMConfig:
        """A copy with `changes` applied and validated."""
        return WiMConfig.model_validate({**self.model_dump(), **changes})
