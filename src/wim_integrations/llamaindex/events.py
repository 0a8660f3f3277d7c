"""LlamaIndex instrumentation events for a WiM run.

They are fired on `get_dispatcher("wim_integrations.llamaindex")` (children of the root dispatcher, so any handler
added with `llama_index.core.instrumentation.get_dispatcher().add_event_handler(...)` sees them), each carrying the
span of the WiM step it belongs to. `node_ids` link a segment or margin to the retrieved nodes it was written on.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field


class WiMSegmentReadEvent(BaseEvent):
    """A segment of the context was read into the cache."""

    segment_index: int
    n_segments: int
    n_tokens: int
    node_ids: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def class_name(cls) -> str:
        return "WiMSegmentReadEvent"


class WiMMarginTokenEvent(BaseEvent):
    """A piece of margin text as it is generated (for live UIs)."""

    segment_index: int
    delta: str

    @classmethod
    def class_name(cls) -> str:
        return "WiMMarginTokenEvent"


class WiMMarginEvent(BaseEvent):
    """A margin note was written (and classified) for one segment."""

    segment_index: int
    n_segments: int
    text: str
    relevant: bool
    verdict: str
    score: float | None = Field(None, description="relevance score (score-based classification modes)")
    node_ids: list[str] = Field(default_factory=list)
    documents: list[dict[str, Any]] = Field(default_factory=list, description="DocumentSpan dumps")
    seconds: float = 0.0
    prompt_tokens: int = Field(0, description="tokens the model read for this margin (segment + margin instruction)")

    @classmethod
    def class_name(cls) -> str:
        return "WiMMarginEvent"


class WiMAnswerStartEvent(BaseEvent):
    """Reading is over; the answer is generated from the relevant margins."""

    n_relevant_margins: int
    segments_read: int
    n_segments: int
    prompt: str = Field("", description="the answer prompt read after the context (kept margins, question), decoded")
    prompt_tokens: int = 0

    @classmethod
    def class_name(cls) -> str:
        return "WiMAnswerStartEvent"


class WiMAnswerTokenEvent(BaseEvent):
    """A piece of the answer as it is generated."""

    delta: str

    @classmethod
    def class_name(cls) -> str:
        return "WiMAnswerTokenEvent"


class WiMAnswerEvent(BaseEvent):
    """The run finished; `result` is `WiMResult.model_dump(mode="json")`."""

    answer: str
    n_segments: int
    segments_read: int
    stopped_early: bool
    result: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "WiMAnswerEvent"


WIM_EVENT_TYPES = (
    WiMSegmentReadEvent,
    WiMMarginTokenEvent,
    WiMMarginEvent,
    WiMAnswerStartEvent,
    WiMAnswerTokenEvent,
    WiMAnswerEvent,
)
