"""Optional dependencies by path: each backend's packages come with an extra, and a missing one is named once, with
the `pip install` line that brings it, before any work starts."""

from __future__ import annotations

from importlib.util import find_spec

from .errors import WiMError

# extra -> (the modules it brings, what needs it)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "hf": (("torch", "transformers", "accelerate", "gguf", "tokenizers", "jinja2"), "in-process Hugging Face models"),
    "server": (("transformers", "tokenizers", "jinja2"), "the served model's tokenizer and chat template"),
    # llama.cpp in process (llama-cpp-python brings numpy); jinja2 renders the GGUF's chat template.
    "llamacpp": (("llama_cpp", "numpy", "jinja2"), "GGUF models on llama.cpp (WiM.from_gguf, from_llama, from_ollama)"),
    "langchain": (("langchain_core", "langsmith"), "the LangChain adapters"),
    "langgraph": (("langgraph",), "the LangGraph node"),
    "llamaindex": (("llama_index.core",), "the LlamaIndex adapters"),
}

# torch from PyPI without an index is the CUDA build (several GB); the CPU build is one line more.
_TORCH_HINT = " (CPU only: `pip install torch --index-url https://download.pytorch.org/whl/cpu` first)"


class MissingExtraError(WiMError, ImportError):
    """A path of wim-integrations was used without the optional packages it needs."""


def missing_modules(extra: str) -> list[str]:
    modules, _ = EXTRAS[extra]
    return [m for m in modules if not _installed(m)]


def require(extra: str) -> None:
    """Raise `MissingExtraError` naming the `pip install` line when `extra`'s packages are not installed."""
    missing = missing_modules(extra)
    if missing:
        _, what = EXTRAS[extra]
        hint = _TORCH_HINT if "torch" in missing else ""
        raise MissingExtraError(
            f"{what} need the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'wim-integrations[{extra}]'{hint}"
        )


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing, or an import hook that refuses it
        return False
