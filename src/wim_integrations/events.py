"""Typed events of a WiM run, in the order the engine emits them.

A run yields, per segment: `SegmentRead`, then `MarginToken`* and one `MarginWritten`; then `AnswerToken`* and a final
`Finished` carrying the `WiMResult`. Adapters (LangChain, LlamaIndex, the CLI) translate these and nothing more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["yes", "no", "unknown", "unclassified"]


class DocumentSpan(BaseModel):
    """The part of one input document that a segment covers (character offsets inside that document)."""

    model_config = ConfigDict(frozen=True)

    doc_index: int
    doc_id: str | None = None
    start_char: int
    end_char: int
    metadata: dict[str, Any] = Field(default_factory=dict)


class Margin(BaseModel):
    """A margin note written after one segment, with its relevance verdict."""

    model_config = ConfigDict(frozen=True)

    segment_index: int
    text: str
    relevant: bool
    verdict: Verdict
    classifier_output: str | None = Field(
        None, description="raw classifier reply, up to where its verdict was settled (same_model/auxiliary modes)"
    )
    score: float | None = Field(
        None,
        description="relevance score computed from the model's probabilities (higher: more relevant); None when "
        "the classification mode computes no score",
    )
    char_span: tuple[int, int]
    token_span: tuple[int, int]
    documents: list[DocumentSpan] = Field(default_factory=list)
    n_tokens: int = Field(description="tokens generated for the margin")
    seconds: float = Field(description="time to write and classify this margin")


class Timings(BaseModel):
    prefill_seconds: float = 0.0
    margin_seconds: float = 0.0
    classify_seconds: float = 0.0
    answer_seconds: float = 0.0
    total_seconds: float = 0.0
    context_cache: Literal["off", "hit", "miss"] = Field(
        "off", description="document cache: 'hit' = context prefill reused, 'miss' = prefilled and stored, 'off'"
    )


class TokenCounts(BaseModel):
    context: int = 0
    prompt: int = Field(0, description="template and instruction tokens prefilled, margin prompts included")
    margin_generated: int = 0
    classifier_generated: int = 0
    answer_generated: int = 0
    answer_prompt: int = Field(0, description="tokens of the final answer prompt (margins + question)")


class WiMResult(BaseModel):
    answer: str
    question: str
    margins: list[Margin]
    n_segments: int
    segments_read: int
    stopped_early: bool = False
    timings: Timings = Field(default_factory=Timings)
    tokens: TokenCounts = Field(default_factory=TokenCounts)
    model: str = ""

    @property
    def relevant_margins(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]


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


class MarginWritten(_Event):
    type: Literal["margin_written"] = "margin_written"
    segment_index: int
    n_segments: int
    margin: Margin

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


class AnswerToken(_Event):
    type: Literal["answer_token"] = "answer_token"
    text: str


class Finished(_Event):
    type: Literal["finished"] = "finished"
    result: WiMResult


WiMEvent = Annotated[
    SegmentRead | MarginToken | MarginWritten | AnswerStarted | AnswerToken | Finished,
    Field(discriminator="type"),
]
