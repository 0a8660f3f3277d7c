"""LlamaIndex integration: WiM as a response synthesizer, a query engine, a node postprocessor and an LLM, with
instrumentation events.

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
from .postprocessor import WiMNodePostprocessor
from .query_engine import WholeDocumentsRetriever, WiMQueryEngine
from .summary import WiMSummarySynthesizer, summary_query_engine
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
    "WiMNodePostprocessor",
    "WiMProgressHandler",
    "WiMQueryEngine",
    "WiMSegmentReadEvent",
    "WiMSummarySynthesizer",
    "WiMSynthesizer",
    "reading_order",
    "summary_query_engine",
    "wim_result",
]
