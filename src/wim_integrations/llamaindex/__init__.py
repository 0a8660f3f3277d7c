"""LlamaIndex integration: WiM as a response synthesizer, a query engine and an LLM, with instrumentation events.

Needs the `llamaindex` extra (`pip install 'wim-integrations[llamaindex]'`).
"""

from __future__ import annotations

from .events import (
    WIM_EVENT_TYPES,
    WiMAnswerEvent,
    WiMAnswerStartEvent,
    WiMAnswerTokenEvent,
    WiMMarginEvent,
    WiMMarginTokenEvent,
    WiMSegmentReadEvent,
)
from .handlers import WiMMarginCollector, WiMProgressHandler
from .llm import WiMLLM
from .query_engine import WholeDocumentsRetriever, WiMQueryEngine
from .synthesizer import WiMSynthesizer, reading_order, wim_result

__all__ = [
    "WIM_EVENT_TYPES",
    "WholeDocumentsRetriever",
    "WiMAnswerEvent",
    "WiMAnswerStartEvent",
    "WiMAnswerTokenEvent",
    "WiMLLM",
    "WiMMarginCollector",
    "WiMMarginEvent",
    "WiMMarginTokenEvent",
    "WiMProgressHandler",
    "WiMQueryEngine",
    "WiMSegmentReadEvent",
    "WiMSynthesizer",
    "reading_order",
    "wim_result",
]
