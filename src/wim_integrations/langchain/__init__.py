"""LangChain adapter: `WiMChain` (a Runnable), `ChatWiM` (a chat model), WiM custom events, callback handlers and
tracing helpers."""

from .callbacks import ConsoleProgressHandler, WiMCallbackHandler
from .chain import WiMChain, WiMChainInput, WiMChainOutput, WiMQuestion
from .chat import ChatWiM
from .compressor import WiMDocumentCompressor
from .events import ANSWER_RUN, CLASSIFY_RUN, EVENT_NAMES, MARGIN_RUN, event_name, event_payload, parse_event
from .tracing import RecordingClient, langsmith_tracer, trace_tree

__all__ = [
    "ANSWER_RUN",
    "CLASSIFY_RUN",
    "EVENT_NAMES",
    "MARGIN_RUN",
    "ChatWiM",
    "ConsoleProgressHandler",
    "RecordingClient",
    "WiMCallbackHandler",
    "WiMChain",
    "WiMChainInput",
    "WiMChainOutput",
    "WiMDocumentCompressor",
    "WiMQuestion",
    "event_name",
    "event_payload",
    "langsmith_tracer",
    "parse_event",
    "trace_tree",
]
