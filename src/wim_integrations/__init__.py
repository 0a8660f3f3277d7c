"""Writing in the Margins (WiM) for LangChain and LlamaIndex on local Hugging Face models."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .analysis import Analysis, WiMSummary
from .config import SamplingConfig, WiMConfig
from .engine import WiM, WiMStream
from .errors import ContextTooLongError, LlamaCppError, ModelLoadError, WiMCancelled, WiMError, WiMInputError
from .events import (
    AnswerStarted,
    AnswerToken,
    ContextDocument,
    DocumentSpan,
    Finished,
    Margin,
    MarginToken,
    MarginWritten,
    SegmentInfo,
    SegmentRead,
    WiMEvent,
    WiMResult,
)
from .extras import MissingExtraError, require
from .inputs import InputDocument
from .prompts import PromptSet
from .reading.doc_cache import DocumentCache

try:
    __version__ = version("wim-integrations")  # the installed package's metadata: one source of truth
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

# Framework adapters load on first use, so the core works without langchain-core or llama-index-core.
_LAZY = {
    "WiMChain": ("wim_integrations.langchain", "langchain"),
    "WiMCallbackHandler": ("wim_integrations.langchain", "langchain"),
    "ChatWiM": ("wim_integrations.langchain", "langchain"),
    "WiMDocumentCompressor": ("wim_integrations.langchain", "langchain"),
    "WiMSynthesizer": ("wim_integrations.llamaindex", "llamaindex"),
    "WiMQueryEngine": ("wim_integrations.llamaindex", "llamaindex"),
    "WiMLLM": ("wim_integrations.llamaindex", "llamaindex"),
    "WiMNodePostprocessor": ("wim_integrations.llamaindex", "llamaindex"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'wim_integrations' has no attribute {name!r}")
    module, extra = _LAZY[name]
    require(extra)  # a missing framework is one MissingExtraError naming its pip line, as on every other path
    return getattr(import_module(module), name)


__all__ = [
    "Analysis",
    "AnswerStarted",
    "AnswerToken",
    "ContextDocument",
    "ContextTooLongError",
    "DocumentCache",
    "DocumentSpan",
    "Finished",
    "InputDocument",
    "Margin",
    "MarginToken",
    "MissingExtraError",
    "MarginWritten",
    "LlamaCppError",
    "ModelLoadError",
    "PromptSet",
    "SamplingConfig",
    "SegmentInfo",
    "SegmentRead",
    "WiM",
    "WiMCancelled",
    "WiMConfig",
    "WiMError",
    "WiMEvent",
    "WiMInputError",
    "WiMResult",
    "WiMStream",
    "WiMSummary",
    *_LAZY,
]
