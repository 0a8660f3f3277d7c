"""The WiM backend on Hugging Face transformers: one `DynamicCache`, public cache API only."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicSlidingWindowLayer

from ..config import SamplingConfig
from .base import GenerationRequest


def _as_id_set(value: int | Sequence[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


class HFBackend:
    """Runs a transformers causal LM. Thread-safe through `lock`; each WiM call owns its own cache."""

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        self.lock = threading.RLock()
        cfg = model.config
        self.max_context_tokens: int | None = getattr(cfg, "max_position_embeddings", None)
        gen = getattr(model, "generation_config", None)
        ids = _as_id_set(getattr(gen, "eos_token_id", None)) or _as_id_set(tokenizer.eos_token_id)
        if not ids:
            raise ValueError("the model has no eos token id in its generation_config or tokenizer; cannot stop.")
        self.stop_ids = frozenset(ids)
        probe = DynamicCache(config=cfg)
        windows = [layer.sliding_window for layer in probe.layers if isinstance(layer, DynamicSlidingWindowLayer)]
        # Rolling a sliding-window layer back past its window is not possible: cap the usable length there.
        self.rollback_limit: int | None = min(windows) if windows else None

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- tokens ----------------------------------------------------------------------------------------
    # HF tokenizers mutate shared state on each call (truncation/padding, special-token splitting), so calls
    # from several threads are serialized with the model's lock.
    def encode_text(self, text: str) -> list[int]:
        with self.lock:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode_template(self, text: str) -> list[int]:
        with self.lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- cache -----------------------------------------------------------------------------------------
    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    def cache_length(self, cache: DynamicCache) -> int:
        return cache.get_seq_length()

    def rollback(self, cache: DynamicCache, length: int) -> None:
        extra = cache.get_seq_length() - length
        if extra < 0:
            raise ValueError(f"cannot roll a cache of {cache.get_seq_length()} tokens forward to {length}")
        cache.crop(-extra)  # transformers 5: crop(n <= 0) removes -n tokens

    # -- compute ---------------------------------------------------------------------------------------
    def _forward(self, cache: DynamicCache, ids: Sequence[int]) -> torch.Tensor:
        """Append `ids` to `cache`; return the logits of the last position only."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def prefill(self, cache: DynamicCache, ids: Sequence[int]) -> None:
        if ids:
            self._forward(cache, ids)

    def generate(self, cache: DynamicCache, request: GenerationRequest) -> Iterator[int]:
        if not request.prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        sampler = _Sampler(request.sampling, self.device)
        history = list(request.prompt_ids)
        logits = self._forward(cache, request.prompt_ids)
        for step in range(request.max_new_tokens):
            token = sampler.next_token(history, logits)
            if token in self.stop_ids:
                return
            history.append(token)
            yield token
            if step + 1 < request.max_new_tokens:  # no forward pass after the last token
                logits = self._forward(cache, [token])


class _Sampler:
    """Greedy argmax, or transformers' logits processors + multinomial sampling."""

    def __init__(self, cfg: SamplingConfig, device: torch.device) -> None:
        self.cfg = cfg
        procs = LogitsProcessorList()
        if cfg.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
        if cfg.do_sample:
            if cfg.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k:
                procs.append(TopKLogitsWarper(cfg.top_k))
            if cfg.top_p < 1.0:
                procs.append(TopPLogitsWarper(cfg.top_p))
        self.procs = procs
        self.generator: torch.Generator | None = None
        if cfg.do_sample and cfg.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def next_token(self, history: list[int], logits: torch.Tensor) -> int:
        scores = logits.float()
        if self.procs:
            ids = torch.tensor([history], dtype=torch.long, device=logits.device)
            scores = self.procs(ids, scores)
        if not self.cfg.do_sample:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())
