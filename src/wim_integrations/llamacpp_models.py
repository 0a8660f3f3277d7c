"""Loading GGUF models for the llama.cpp backend: a file, an already loaded `llama_cpp.Llama` (what LangChain's
`LlamaCpp` and LlamaIndex's `LlamaCPP` hold), or a model pulled by Ollama, found in its local store (no server)."""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, WiMInputError
from .extras import require

# The window WiM plans with when none is given: the model's trained context, capped (the KV cells are allocated up
# front, and 8192 tokens of a 7B model's keys/values already take 1 GiB).
DEFAULT_MAX_CTX = 8192
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_backend_ready = False


def _llama_cpp() -> Any:
    global _backend_ready
    require("llamacpp")
    import llama_cpp

    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True
    return llama_cpp


class _LoadedModel:
    """A `llama_model` this module loaded, freed once nothing (backend or context) holds it."""

    def __init__(self, lib: Any, path: Path, n_gpu_layers: int) -> None:
        params = lib.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path}: not a GGUF model it supports, or a damaged file.")
        self.model = model
        weakref.finalize(self, lib.llama_model_free, model)


def _check_options(n_ctx: int | None, n_threads: int | None, n_gpu_layers: int) -> None:
    for name, value, low in (("n_ctx", n_ctx, 16), ("n_threads", n_threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise WiMInputError(f"{name}={value!r}: pass an int >= {low}, or leave it out for the default.")
    if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
        raise WiMInputError(f"n_gpu_layers={n_gpu_layers!r}: pass 0 (CPU), a layer count, or -1 (all layers).")


def load_gguf_backend(
    path: str | os.PathLike[str],
    *,
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    name: str | None = None,
    verbose: bool = False,
) -> Any:
    """A `LlamaCppBackend` on a GGUF file. `n_ctx`: the window WiM plans with (default: the model's trained context,
    at most 8192); `n_threads`: llama.cpp's threads (default half the cores); `n_gpu_layers`: layers offloaded to a
    GPU where llama.cpp was built with one (-1: all)."""
    _check_options(n_ctx, n_threads, n_gpu_layers)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError(
            f"GGUF file not found: {file}" + (" (a directory; pass the .gguf file in it)" if file.is_dir() else "")
        )
    with file.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelLoadError(f"{file} is not a GGUF file (it does not start with 'GGUF').")
    lib = _llama_cpp()
    from llama_cpp._logger import set_verbose

    set_verbose(verbose)
    loaded = _LoadedModel(lib, file, n_gpu_layers)
    return _backend(lib, loaded.model, loaded, name or file.name, n_ctx, n_threads)


def _backend(lib: Any, model: Any, owner: Any, name: str, n_ctx: int | None, n_threads: int | None) -> Any:
    from .backends.llamacpp import LlamaCppBackend

    trained = int(lib.llama_model_n_ctx_train(model)) or DEFAULT_MAX_CTX
    return LlamaCppBackend(
        model, name=name, n_ctx=n_ctx or min(trained, DEFAULT_MAX_CTX), n_threads=n_threads, owner=owner
    )


def llama_of(obj: Any) -> Any:
    """The `llama_cpp.Llama` in `obj`: itself, LangChain's `LlamaCpp(...).client`, or LlamaIndex's `LlamaCPP`'s."""
    candidates = [obj, getattr(obj, "client", None), getattr(obj, "_model", None)]
    # An object none of whose classes come from llama_cpp cannot be a Llama: say so without asking for the extra.
    if any(_from_llama_cpp(c) for c in candidates):
        lib = _llama_cpp()
        for candidate in candidates:
            if isinstance(candidate, lib.Llama):
                return candidate
    raise WiMInputError(
        f"{type(obj).__name__} holds no llama_cpp.Llama: pass a loaded Llama, LangChain's LlamaCpp/ChatLlamaCpp or "
        "LlamaIndex's LlamaCPP (or a GGUF path to WiM.from_gguf)."
    )


def _from_llama_cpp(obj: Any) -> bool:
    return any(cls.__module__.split(".")[0] == "llama_cpp" for cls in type(obj).__mro__)


def backend_from_llama(llm: Any, *, n_ctx: int | None = None, n_threads: int | None = None) -> Any:
    """A `LlamaCppBackend` on the weights of an already loaded model. WiM runs in a llama.cpp context of its own
    (several sequences in one unified KV cache), so the model's own context is left as it is; the window defaults to
    that context's `n_ctx`, the threads to its threads."""
    _check_options(n_ctx, n_threads, 0)
    lib = _llama_cpp()
    llama = llama_of(llm)
    if getattr(llama, "_model", None) is None or llama.model is None:
        raise WiMInputError("this llama_cpp.Llama is closed; load it again.")
    name = Path(str(getattr(llama, "model_path", "") or "llama_cpp.Llama")).name
    threads = n_threads or int(llama.context_params.n_threads) or None
    return _backend(lib, llama.model, llama, name, n_ctx or int(llama.n_ctx()), threads)


JUDGE_N_CTX = 2048  # a judge reads a question and one margin at a time: a small window keeps its KV cells few


def judge_backend(judge: Any, *, n_threads: int | None = None) -> Any:
    """The auxiliary judge model as a backend: a GGUF path (loaded here with a `JUDGE_N_CTX` window), a loaded
    `llama_cpp.Llama` (or LangChain's / LlamaIndex's wrapper of one; its weights shared), or a backend as it is."""
    from .backends.base import Backend

    if isinstance(judge, Backend):
        return judge
    if isinstance(judge, (str, os.PathLike)):
        return load_gguf_backend(judge, n_ctx=JUDGE_N_CTX, n_threads=n_threads)
    try:
        llama = llama_of(judge)
    except WiMInputError:
        raise WiMInputError(
            f"judge={type(judge).__name__!r}: pass a GGUF file path, a loaded llama_cpp.Llama, or a WiM backend "
            "(docs/benchmarks.md, 'An auxiliary judge model', says how to get Gemma 3 270M's GGUF)."
        ) from None
    return backend_from_llama(llama, n_ctx=min(JUDGE_N_CTX, int(llama.n_ctx())), n_threads=n_threads)


# -- Ollama's local store ----------------------------------------------------------------------------------------
def ollama_models_dir() -> Path:
    """Ollama's model store: $OLLAMA_MODELS, else ~/.ollama/models (as the Ollama server finds it)."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def ollama_manifest_path(name: str, models_dir: Path | None = None) -> Path:
    """The manifest of `name[:tag]` ("llama3.2", "qwen2.5:0.5b", "user/model:tag", "host/ns/model:tag")."""
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name) or ".." in name:
        raise WiMInputError(f"Ollama model name {name!r}: pass it as `ollama list` shows it, e.g. 'qwen2.5:0.5b'.")
    ref, tag = name, "latest"
    if ":" in name.rsplit("/", 1)[-1]:
        ref, tag = name.rsplit(":", 1)
    parts = ref.split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return (models_dir or ollama_models_dir()) / "manifests" / Path(*parts) / tag


def ollama_gguf_path(name: str, models_dir: Path | None = None) -> Path:
    """The GGUF blob of an Ollama model, found through its manifest's model layer."""
    manifest = ollama_manifest_path(name, models_dir)
    if not manifest.is_file():
        raise ModelLoadError(
            f"Ollama model {name!r} not found: no manifest at {manifest}. Pull it first (`ollama pull {name}`), or "
            "set OLLAMA_MODELS to the store it is in."
        )
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == OLLAMA_MODEL_LAYER)
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise ModelLoadError(
            f"{manifest} is not an Ollama manifest with a model layer ({OLLAMA_MODEL_LAYER})."
        ) from exc
    blob = _store_root(manifest) / "blobs" / str(digest).replace(":", "-")
    if not blob.is_file():
        raise ModelLoadError(f"Ollama model {name!r}: its manifest {manifest} names {blob}, which is missing.")
    return blob


def _store_root(manifest: Path) -> Path:
    """The store a manifest lies in (the folder above `manifests/`)."""
    for parent in manifest.parents:
        if parent.name == "manifests":
            return parent.parent
    raise ModelLoadError(f"{manifest} is not inside an Ollama store's manifests/ folder.")


def load_ollama_backend(name: str, *, models_dir: str | os.PathLike[str] | None = None, **options: Any) -> Any:
    """A `LlamaCppBackend` on an Ollama model's GGUF blob (`options` as `load_gguf_backend`)."""
    path = ollama_gguf_path(name, Path(models_dir).expanduser() if models_dir is not None else None)
    return load_gguf_backend(path, name=options.pop("name", None) or f"ollama:{name}", **options)
