"""Typed events of a WiM run, in the order the engine emits them.

A run yields, per segment: `SegmentRead`, then `MarginToken`* and one `MarginWritten`; then `AnswerToken`* and a final
`Finished` carrying the `WiMResult`. Adapters (LangChain, LlamaIndex, the CLI) translate these and nothing more.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from .results import (
    ContextDocument,
    DocumentSpan,
    Margin,
    SegmentInfo,
    Timings,
    TokenCounts,
    Verdict,
    WiMResult,
)

__all__ = [
    "AnswerStarted",
    "AnswerToken",
    "ContextDocument",
    "DocumentSpan",
    "Finished",
    "Margin",
    "MarginToken",
    "MarginWritten",
    "ModelCall",
    "SegmentInfo",
    "SegmentRead",
    "Timings",
    "TokenCounts",
    "Verdict",
    "WiMEvent",
    "WiMResult",
]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class SegmentRead(_Event):
    type: Literal["segment_read"] = "segment_read"
    segment_index: int
    n_segments: int
    char_span: tuple[int, int]
    token_span: tuple[int, int]
    n_tokens: int
    documents: list[DocumentSpan] = Field(default_factory=list)
    seconds: float


class MarginToken(_Event):
    type: Literal["margin_token"] = "margin_token"
    segment_index: int
    text: str


class ModelCall(BaseModel):
    """One model call a step made besides the margin itself (a classifier's judgement), as tracers show it."""

    model_config = ConfigDict(frozen=True)

    model: str
    prompt: str = Field(description="the prompt as the model read it (decoded), chat template included")
    prompt_tokens: int
    output_tokens: int


class MarginWritten(_Event):
    type: Literal["margin_written"] = "margin_written"
    segment_index: int
    n_segments: int
    margin: Margin
    prompt_tokens: int = Field(
        0,
        description="tokens the model read for this margin: its segment (the first one with the context's opening) "
        "and the margin instruction, whether computed or taken from the document cache",
    )
    judge_call: ModelCall | None = Field(
        None, description="the classifier's call that judged this margin (same_model / auxiliary modes), else None"
    )

    @property
    def text(self) -> str:
        return self.margin.text

    @property
    def relevant(self) -> bool:
        return self.margin.relevant


class AnswerStarted(_Event):
    type: Literal["answer_started"] = "answer_started"
    n_relevant_margins: int
    segments_read: int
    n_segments: int
    prompt: str = Field("", description="the answer prompt read after the context (kept margins, question), decoded")
    prompt_tokens: int = Field(0, description="tokens of that prompt")


class AnswerToken(_Event):
    type: Literal["answer_token"] = "answer_token"
    text: str


class Finished(_Event):
    type: Literal["finished"] = "finished"
    result: SerializeAsAny[WiMResult]  # a WiMSummary keeps its own fields (instruction) in payloads


WiMEvent = Annotated[
    SegmentRead | MarginToken | MarginWritten | AnswerStarted | AnswerToken | Finished,
    Field(discriminator="type"),
]
