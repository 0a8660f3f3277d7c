"""The WiM backend on Hugging Face transformers: one `DynamicCache`, public cache API only."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import threading
import uuid
from collections.abc import Generator, Iterator, Sequence
from typing import Any, cast

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..config import SamplingConfig
from .attention import wim_sdpa
from .base import Capabilities, GenerationRequest, PackedRequest, PackedRow, PromptAside, RowScores, check_rows
from .kv_buffer import BufferedLayer
from .tokenizer import HFTokenizer, TokenizerMethods


def _as_id_set(value: int | Sequence[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


class HFBackend(TokenizerMethods):
    """Runs a transformers causal LM. Thread-safe through `lock`; each WiM call owns its own cache."""

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer  # the Hugging Face tokenizer, for users; WiM goes through `tokens`
        self.tokens = HFTokenizer(tokenizer)
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__
        self.lock = threading.RLock()
        # transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns, then goes away in
        # 5.40): pass the cache under the name the installed version's model takes.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
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
        # Identifies this loaded model in document-cache keys (two loads of one checkpoint never share entries).
        self.cache_namespace = f"{self.name}:{uuid.uuid4().hex}"

    @property
    def supports_packed(self) -> bool:
        """Packed rows need every layer to keep the whole cache (no sliding-window layer dropping old tokens)."""
        return self.rollback_limit is None

    @property
    def capabilities(self) -> Capabilities:
        packed = self.supports_packed
        return Capabilities(
            packed_rows=packed,
            scoring="rows" if packed else "plain",
            generation_logprobs=True,
            kv_asides=packed,
            constrained_margins=True,
            local_document_cache=packed,
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- cache -----------------------------------------------------------------------------------------
    def new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        # Full-attention layers append in place (see kv_buffer); sliding-window layers keep transformers' own class.
        cache.layers = [BufferedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
        return cache

    def cache_length(self, cache: DynamicCache) -> int:
        return cache.get_seq_length()

    def rollback(self, cache: DynamicCache, length: int) -> None:
        extra = cache.get_seq_length() - length
        if extra < 0:
            raise ValueError(f"cannot roll a cache of {cache.get_seq_length()} tokens forward to {length}")
        cache.crop(-extra)  # transformers 5: crop(n <= 0) removes -n tokens

    def fork_cache(self, cache: DynamicCache) -> DynamicCache:
        # No copy: a BufferedLayer fork gives up writing into the shared buffer (copy on write), and DynamicLayer
        # update concatenates into new tensors while crop slices a view, so neither cache writes the other's storage.
        fork = copy.copy(cache)
        fork.layers = [layer.fork() if isinstance(layer, BufferedLayer) else copy.copy(layer) for layer in cache.layers]
        return fork

    def reserve(self, cache: DynamicCache, n_tokens: int) -> None:
        for layer in cache.layers:
            if isinstance(layer, BufferedLayer):
                layer.reserve(n_tokens)

    def compact_cache(self, cache: DynamicCache) -> DynamicCache:
        with self.lock, torch.inference_mode():
            out = copy.copy(cache)
            out.layers = [
                layer.compact() if isinstance(layer, BufferedLayer) else copy.copy(layer) for layer in cache.layers
            ]
        return out

    def filled_nbytes(self, cache: DynamicCache) -> int:
        """Bytes of the keys and values the cache holds (its filled length, without spare room)."""
        return sum(
            t.numel() * t.element_size()
            for layer in cache.layers
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
            if isinstance(t, torch.Tensor)
        )

    def cache_nbytes(self, cache: DynamicCache) -> int:
        """Bytes of the storage behind the cache's keys and values (spare buffer room and cropped views included)."""
        storages: dict[int, int] = {}
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor) and t.numel():
                    storage = t.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    # -- compute ---------------------------------------------------------------------------------------
    def _forward(self, cache: DynamicCache, ids: Sequence[int]) -> torch.Tensor:
        """Append `ids` to `cache`; return the logits of the last position only."""
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        return out.logits[:, -1, :]

    def prefill(self, cache: DynamicCache, ids: Sequence[int]) -> None:
        if ids:
            self._forward(cache, ids)

    def generate(self, cache: DynamicCache, request: GenerationRequest) -> Generator[int, None, None]:
        if not request.prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        sampler = _Sampler(request.sampling, self.device)
        history = list(request.prompt_ids)
        quote = request.span.start() if request.span is not None else None
        logits = self._forward(cache, request.prompt_ids)
        for step in range(request.max_new_tokens):
            scores = logits
            if quote is not None:
                allowed = quote.allowed_ids(self.stop_ids)
                if allowed is None:  # the quote cannot go on: it ends here, as at a stop token
                    return
                scores = _masked(logits, allowed)
            token = sampler.next_token(history, scores)
            if token in self.stop_ids:
                return
            if quote is not None:
                quote.push(token)
            history.append(token)
            if request.logprobs is not None:
                request.logprobs.append(_logprob(logits, token))
            yield token
            if step + 1 < request.max_new_tokens:  # no forward pass after the last token
                logits = self._forward(cache, [token])

    def prefill_aside(self, cache: DynamicCache, prompt_ids: Sequence[int]) -> PromptAside:
        """The prompt's forward on top of the cache (plain causal attention over exactly the prefix, the cheapest
        way to compute it), its keys/values copied out, then the cache rolled back."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        base = self.cache_length(cache)
        try:
            logits = self._forward(cache, prompt_ids)
            aside = self.take_aside(cache, base, prompt_ids)
        finally:
            self.rollback(cache, base)
        return dataclasses.replace(aside, last_logits=logits)

    def take_aside(self, cache: DynamicCache, start: int, prompt_ids: Sequence[int]) -> PromptAside:
        """Copies of the keys/values `prompt_ids` left in the cache at `start` (no logits)."""
        end = start + len(prompt_ids)
        if end > self.cache_length(cache):
            raise ValueError(f"the cache holds {self.cache_length(cache)} tokens, not the {end} this prompt needs")
        # Copies: once the cache is rolled back, its next writes go into the same buffer region.
        kv = [(keys[..., start:end, :].clone(), values[..., start:end, :].clone()) for keys, values in _kv(cache)]
        return PromptAside(start, list(prompt_ids), kv, None)

    def generate_packed(
        self, cache: DynamicCache, request: PackedRequest
    ) -> Generator[list[tuple[int, int]], None, None]:
        """Decode all rows in one sequence appended to `cache` (batch size 1, nothing copied).

        Each forward appends the running rows' tokens; a 4D additive mask lets a token see the cache up to its row's
        `prefix_length` plus the earlier tokens of its own row, and position ids continue from `prefix_length`, so
        every row computes what a cache cut at its prefix would give. A row ends at a stop token, after
        `max_new_tokens`, or once `done(row, its tokens so far)` is true."""
        rows = request.rows
        if not rows:
            return
        base = self.cache_length(cache)
        check_rows(rows, base)
        for r in rows:
            a = r.aside
            if a is not None and len(a.prompt_ids) == len(r.prompt_ids) and a.last_logits is None:
                raise ValueError("a row's prompt is all aside but its last logits were not kept (aside_head)")
        dev = self.device
        prefix = torch.tensor([r.prefix_length for r in rows], dtype=torch.long, device=dev)
        samplers = [_Sampler(request.sampling, dev) for _ in rows]
        histories = [list(r.prompt_ids) for r in rows]
        next_pos = [r.prefix_length + len(r.prompt_ids) for r in rows]
        produced = [0] * len(rows)
        quotes = request.span_matchers()
        try:
            # Step 0: prompts. Parts computed aside are appended as they are; the rest of every prompt goes through
            # one packed forward, keeping only the logits of each row's last prompt token.
            asides = [(i, r.aside) for i, r in enumerate(rows) if r.aside is not None]
            self._append_asides(cache, [a for _, a in asides])
            appended_rows = torch.tensor([i for i, a in asides for _ in a.prompt_ids], dtype=torch.long, device=dev)
            done_len = [len(r.aside.prompt_ids) if r.aside is not None else 0 for r in rows]
            row_logits: dict[int, torch.Tensor] = {
                i: a.last_logits
                for i, a in asides
                if done_len[i] == len(rows[i].prompt_ids) and a.last_logits is not None  # checked above
            }
            rest = [i for i, r in enumerate(rows) if done_len[i] < len(r.prompt_ids)]
            if rest:
                q_rows = [i for i in rest for _ in rows[i].prompt_ids[done_len[i] :]]
                ids = [t for i in rest for t in rows[i].prompt_ids[done_len[i] :]]
                pos = [rows[i].prefix_length + k for i in rest for k in range(done_len[i], len(rows[i].prompt_ids))]
                ends = torch.tensor(list(_cumsum(len(rows[i].prompt_ids) - done_len[i] for i in rest)), device=dev) - 1
                fwd, appended_rows = self._packed_forward(cache, base, prefix, appended_rows, q_rows, ids, pos, ends)
                row_logits.update({i: fwd[j : j + 1] for j, i in enumerate(rest)})
            logits = torch.cat([row_logits[i] for i in range(len(rows))])
            active = list(range(len(rows)))
            while active:
                step: list[tuple[int, int]] = []
                feed: list[int] = []
                for j, i in enumerate(active):
                    scores, quote = logits[j : j + 1], quotes[i]
                    if quote is not None:
                        allowed = quote.allowed_ids(self.stop_ids)
                        if allowed is None:  # the quote cannot go on: the row ends, as at a stop token
                            continue
                        scores = _masked(scores, allowed)
                    token = samplers[i].next_token(histories[i], scores)
                    if token in self.stop_ids:
                        continue
                    if quote is not None:
                        quote.push(token)
                    histories[i].append(token)
                    if request.logprobs is not None:
                        request.logprobs[i].append(_logprob(logits[j : j + 1], token))
                    produced[i] += 1
                    step.append((i, token))
                    finished = request.done is not None and request.done(i, histories[i][len(rows[i].prompt_ids) :])
                    if (
                        produced[i] < request.max_new_tokens and not finished
                    ):  # no forward pass after a row's last token
                        feed.append(i)
                if step:
                    yield step
                active = feed
                if not active:
                    break
                toks = [histories[i][-1] for i in active]
                pos = [next_pos[i] + produced[i] - 1 for i in active]
                logits, appended_rows = self._packed_forward(
                    cache, base, prefix, appended_rows, active, toks, pos, None
                )
        finally:
            self.rollback(cache, base)

    def score_rows(
        self,
        cache: DynamicCache,
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,  # every value is computed here anyway
    ) -> list[RowScores]:
        """Teacher-forced log-probabilities of rows read on top of the cache: one packed forward (each row sees its
        cache prefix and itself) where the cache keeps every layer whole, else one forward per row."""
        base = self.cache_length(cache)
        packed_rows = [r if isinstance(r, PackedRow) else PackedRow(base, r) for r in rows]
        check_rows(packed_rows, base)
        if not rows:
            return []
        for r in packed_rows:
            if r.aside is not None and len(r.aside.prompt_ids) == len(r.prompt_ids):
                raise ValueError("a scored row must compute at least one token after its aside")
        plain = all(r.prefix_length == base and r.aside is None for r in packed_rows)
        if plain and (len(rows) == 1 or not self.supports_packed):
            return [self._score_one(cache, r.prompt_ids, next_ids) for r in packed_rows]
        if not self.supports_packed:
            raise ValueError("rows that see only part of the cache need packed rows (no sliding-window layers)")
        dev = self.device
        prefix = torch.tensor([r.prefix_length for r in packed_rows], dtype=torch.long, device=dev)
        asides = [(i, r.aside) for i, r in enumerate(packed_rows) if r.aside is not None]
        done_len = [len(r.aside.prompt_ids) if r.aside is not None else 0 for r in packed_rows]
        q_rows = [i for i, r in enumerate(packed_rows) for _ in r.prompt_ids[done_len[i] :]]
        ids = [t for i, r in enumerate(packed_rows) for t in r.prompt_ids[done_len[i] :]]
        pos = [r.prefix_length + k for i, r in enumerate(packed_rows) for k in range(done_len[i], len(r.prompt_ids))]
        try:
            self._append_asides(cache, [a for _, a in asides])
            appended = torch.tensor([i for i, a in asides for _ in a.prompt_ids], dtype=torch.long, device=dev)
            logits, _ = self._packed_forward(cache, base, prefix, appended, q_rows, ids, pos, None)
        finally:
            self.rollback(cache, base)
        starts = [0, *_cumsum(len(r.prompt_ids) - done_len[i] for i, r in enumerate(packed_rows))]
        return [
            _row_scores(logits[a:b], r.prompt_ids[d:], next_ids)
            for a, b, r, d in zip(starts, starts[1:], packed_rows, done_len, strict=False)
        ]

    def _score_one(self, cache: DynamicCache, row: Sequence[int], next_ids: Sequence[int]) -> RowScores:
        base = self.cache_length(cache)
        input_ids = torch.tensor([list(row)], dtype=torch.long, device=self.device)
        try:
            with self.lock, torch.inference_mode():
                logits = self.model(input_ids=input_ids, use_cache=True, **{self._cache_kwarg: cache}).logits[0]
        finally:
            self.rollback(cache, base)
        return _row_scores(logits, row, next_ids)

    def aside_head(self, aside: PromptAside, n_tokens: int) -> PromptAside:
        """The first `n_tokens` of a prompt aside (own copies), without logits: a prompt head to continue later."""
        kv = [(k[..., :n_tokens, :].clone(), v[..., :n_tokens, :].clone()) for k, v in aside.kv]
        return PromptAside(aside.prefix_length, list(aside.prompt_ids[:n_tokens]), kv, None)

    def aside_nbytes(self, aside: PromptAside) -> int:
        tensors = [t for kv in aside.kv for t in kv]
        if aside.last_logits is not None:
            tensors.append(aside.last_logits)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _append_asides(self, cache: DynamicCache, asides: Sequence[PromptAside]) -> None:
        # Keys were rotated at their own positions when computed, so appended anywhere they stay what they were.
        if not asides:
            return
        with self.lock, torch.inference_mode():  # the cache's buffers are inference tensors, written in place
            for i, layer in enumerate(_dynamic_layers(cache)):
                keys = torch.cat([a.kv[i][0] for a in asides], dim=-2)
                values = torch.cat([a.kv[i][1] for a in asides], dim=-2)
                layer.update(keys, values)

    def _packed_forward(
        self,
        cache: DynamicCache,
        base: int,
        prefix: torch.Tensor,
        appended_rows: torch.Tensor,
        q_rows: list[int],
        ids: list[int],
        positions: list[int],
        keep: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        qr = torch.tensor(q_rows, dtype=torch.long, device=dev)
        all_rows = torch.cat([appended_rows, qr])
        n_app, n_q = appended_rows.numel(), qr.numel()
        sees_prefix = torch.arange(base, device=dev)[None, :] < prefix[qr][:, None]
        own = all_rows[None, :] == qr[:, None]
        causal = torch.arange(n_app + n_q, device=dev)[None, :] <= (n_app + torch.arange(n_q, device=dev))[:, None]
        allowed = torch.cat([sees_prefix, own & causal], dim=1)
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
        input_ids = torch.tensor([ids], dtype=torch.long, device=dev)
        position_ids = torch.tensor([positions], dtype=torch.long, device=dev)
        # wim_sdpa: native grouped-query attention under this mask on the CPU, for this call only (see attention.py).
        with self.lock, torch.inference_mode(), wim_sdpa(self.model):
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=mask[None, None],
                **{self._cache_kwarg: cache},
                use_cache=True,
                logits_to_keep=keep if keep is not None else 0,
            )
        return out.logits[0], all_rows


def _dynamic_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, all key/value layers (`new_cache` builds no other kind; linear-attention ones would fail)."""
    layers = list(cache.layers)
    if not all(isinstance(layer, DynamicLayer) for layer in layers):
        raise TypeError("WiM needs key/value cache layers; recurrent/linear-attention caches are not supported")
    return cast(list[DynamicLayer], layers)


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of every layer of a cache that holds tokens."""
    out = []
    for layer in _dynamic_layers(cache):
        if layer.keys is None or layer.values is None:
            raise ValueError("the cache layer holds no tokens yet")
        out.append((layer.keys, layer.values))
    return out


def _masked(logits: torch.Tensor, allowed: Sequence[int]) -> torch.Tensor:
    """`logits` (1, vocab) with every id outside `allowed` at -inf: sampling then picks among `allowed` only."""
    ids = torch.tensor([t for t in allowed if t < logits.shape[-1]], dtype=torch.long, device=logits.device)
    out = torch.full_like(logits, float("-inf"))
    out[..., ids] = logits[..., ids]
    return out


def _logprob(logits: torch.Tensor, token: int) -> float:
    """log P(token) under the model's own distribution (the last row of `logits`), before any sampling processor."""
    return float(torch.log_softmax(logits[-1].float(), dim=-1)[token])


def _row_scores(logits: torch.Tensor, row: Sequence[int], next_ids: Sequence[int]) -> RowScores:
    """`logits[j]` predicts the token after `row[j]`."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = torch.tensor(list(row[1:]), dtype=torch.long, device=logits.device)
    token_lp = logp[:-1].gather(1, targets[:, None])[:, 0].tolist() if len(row) > 1 else []
    return RowScores(token_lp, {int(t): float(logp[-1, t]) for t in next_ids})


def _cumsum(values: Iterator[int] | Sequence[int]) -> Iterator[int]:
    total = 0
    for v in values:
        total += v
        yield total


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
            ids = cast(torch.LongTensor, torch.tensor([history], dtype=torch.long, device=logits.device))
            scores = self.procs(ids, scores)
        if not self.cfg.do_sample:
            return int(scores.argmax(dim=-1).item())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator).item())
