"""What a run produces: margins, token counts, timings, and the result with its segments and documents."""

from __future__ import annotations

import os
from typing import Any, Literal

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
    """A margin note written after one segment, with its relevance verdict (in a summary or analysis: a note)."""

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
    score_terms: dict[str, float] | None = Field(
        None,
        description="the terms a combined score was computed from (question_pmi: 'grounding', the segment_pmi score, "
        "and 'question', how much the question raised the margin); None for other modes",
    )
    char_span: tuple[int, int]
    token_span: tuple[int, int]
    documents: list[DocumentSpan] = Field(default_factory=list)
    n_tokens: int = Field(description="tokens generated for the margin")
    data: dict[str, Any] | None = Field(None, description="an analysis note validated against its schema")
    parse_error: str | None = Field(None, description="why an analysis note did not validate against its schema")
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
    cache_read: int = Field(
        0,
        description="prompt tokens whose keys/values came from the document cache instead of being computed (on a "
        "hit: the chat head, the context and the stored margin-prompt heads; 0 on a miss)",
    )
    input_total: int = Field(
        0,
        description="every prompt token the run fed the model, computed or from the document cache: context, "
        "templates, margin prompts and the answer prompt (the same for a hit and a miss of the same call)",
    )


class SegmentInfo(BaseModel):
    """One segment of the context as the run saw it: read or not (a run stopped with `answer_now()` leaves the rest
    unread), with the seconds its prefill took (0 when reused from a document cache)."""

    model_config = ConfigDict(frozen=True)

    index: int
    char_span: tuple[int, int]
    token_span: tuple[int, int]
    read: bool
    seconds: float = 0.0


class ContextDocument(BaseModel):
    """One input document and where it lies in the joined context text."""

    model_config = ConfigDict(frozen=True)

    index: int
    id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    char_span: tuple[int, int]


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
    segments: list[SegmentInfo] = Field(default_factory=list)
    documents: list[ContextDocument] = Field(default_factory=list)
    # The text that was read, for rendering. Left out of dumps (JSON, traces, event payloads): it is the user's input,
    # often large, and every consumer already has it.
    context_text: str = Field("", exclude=True, repr=False)

    @property
    def relevant_margins(self) -> list[Margin]:
        return [m for m in self.margins if m.relevant]

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """This run as a self-contained HTML page (inline CSS, no script): the answer on top, the document in its
        segments with each margin beside its segment. Written to `path` (UTF-8) when given; the page is returned."""
        from .frontends.html import write_page

        return write_page(self, path)

    def _repr_html_(self) -> str:  # Jupyter
        from .frontends.html import render_fragment

        return render_fragment(self)
