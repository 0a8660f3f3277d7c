"""The WiM backend on llama.cpp in this process, through llama-cpp-python's low-level API (no torch).

One llama context with a unified KV cache holds every sequence WiM uses. A WiM cache is one sequence id and the
tokens it holds; rollback is `llama_memory_seq_rm`. A packed row is a sequence of its own that shares the document's
KV cells up to its segment's end (`llama_memory_seq_cp` copies cell membership, not keys/values), so all rows decode
together in one `llama_decode` batch per step and each attends to its prefix and itself only; the rows' sequences are
removed when the iterator ends, which leaves the document's sequence as it was (docs/architecture.md)."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import SamplingConfig
from ..errors import LlamaCppError, WiMInputError
from ..prompts import ChatFrame
from .base import Capabilities, GenerationRequest, PackedRow, RowScores
from .gguf_tokenizer import GGUFTokenizer


class LlamaCppCache:
    """A WiM cache on llama.cpp: one sequence of the backend's context and the tokens it holds (positions 0..n-1).
    Its sequence is freed when the cache is garbage-collected."""

    __slots__ = ("__weakref__", "seq_id", "tokens")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []


def default_threads() -> int:
    """Half the cores, as llama-cpp-python's `Llama` picks (ggml's threads spin: more than the cores is slower)."""
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppBackend:
    """Runs a GGUF model loaded by llama.cpp. Thread-safe: every call into the context holds `lock`.

    `model` is a `llama_model` pointer; `owner` keeps whatever owns it alive (a `llama_cpp.Llama`, or the loader that
    frees it). `n_ctx` is the longest sequence (the context window WiM plans with); the context gets `n_ctx * 3 // 2`
    KV cells, the extra half for the margins' rows and the scoring sequences that share the document's cells."""

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        n_ctx: int,
        n_threads: int | None = None,
        n_seq_max: int = 64,
        n_batch: int = 2048,
        owner: Any = None,
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._owner = owner
        self.model = model
        self.name = name
        self.lock = threading.RLock()
        if llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model):
            raise WiMInputError(
                f"{name!r} is a recurrent/hybrid model: its state cannot be shared between sequences or rolled back "
                "to any length, which WiM's margins need; use an attention model."
            )
        self.tokens = GGUFTokenizer(model, name)
        ids = self.tokens.eos_ids
        if not ids:
            raise WiMInputError(f"{name!r} has no end-of-generation token in its vocabulary; cannot stop.")
        self.stop_ids = frozenset(ids)
        self.max_context_tokens: int | None = n_ctx
        self.rollback_limit: int | None = None  # swa_full below keeps every cell, so any rollback works
        self.n_threads = n_threads or default_threads()
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx + n_ctx // 2
        params.n_batch = n_batch
        params.n_ubatch = min(512, n_batch)
        params.n_seq_max = n_seq_max
        params.kv_unified = True  # one pool of cells: sequences share the document's cells, each up to n_ctx long
        params.swa_full = True
        params.n_threads = params.n_threads_batch = self.n_threads
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise LlamaCppError(f"llama.cpp could not create a context of {params.n_ctx} cells for {name!r}.")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_vocab = self.tokens.n_vocab
        self.n_cells = int(params.n_ctx)
        self._free_seqs = list(range(n_seq_max - 1, -1, -1))
        self._released: list[int] = []  # sequences of collected caches, freed at the next call (no lock in a finalizer)
        self._close = weakref.finalize(self, _free_context, llama_cpp, ctx, self._batch)

    def close(self) -> None:
        """Free the llama.cpp context now (the model belongs to its owner)."""
        with self.lock:
            self._close()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(packed_rows=True, scoring="rows", generation_logprobs=True)

    # -- tokens ------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return self.tokens.encode_text(text)

    def encode_template(self, text: str) -> list[int]:
        return self.tokens.encode_template(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        return self.tokens.encode_with_offsets(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokens.decode(ids)

    def chat_frame(self) -> ChatFrame:
        return self.tokens.chat_frame()

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.tokens.render_chat(messages)

    def min_tokens(self, n_bytes: int) -> int | None:
        return self.tokens.min_tokens(n_bytes)

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        return self.tokens.stream_decoder()

    # -- sequences ---------------------------------------------------------------------------------------
    def _acquire(self) -> int:
        with self.lock:
            self._reclaim()
            if not self._free_seqs:
                raise LlamaCppError(
                    f"all {self.n_seq_max} llama.cpp sequences of this backend are in use (caches, packed rows); "
                    "finish or close other runs, or build the backend with a larger n_seq_max."
                )
            return self._free_seqs.pop()

    def _release(self, seq_id: int) -> None:
        with self.lock:
            if not self._close.alive:  # the context is gone, and its cells with it
                return
            self._lib.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            self._free_seqs.append(seq_id)

    def _reclaim(self) -> None:
        while self._released:
            self._release(self._released.pop())

    def new_cache(self) -> LlamaCppCache:
        cache = LlamaCppCache(self._acquire())
        weakref.finalize(cache, self._released.append, cache.seq_id)
        return cache

    def cache_length(self, cache: LlamaCppCache) -> int:
        return len(cache.tokens)

    def rollback(self, cache: LlamaCppCache, length: int) -> None:
        if length > len(cache.tokens) or length < 0:
            raise ValueError(f"cannot roll a cache of {len(cache.tokens)} tokens to {length}")
        with self.lock:
            if self._close.alive:
                self._lib.llama_memory_seq_rm(self._mem, cache.seq_id, length, -1)
            del cache.tokens[length:]

    # -- compute -----------------------------------------------------------------------------------------
    def _decode(
        self, ids: Sequence[int], pos: Sequence[int], seqs: Sequence[int], outputs: Sequence[int]
    ) -> np.ndarray:
        """Decode tokens (each at its position in its sequence) in batches of `n_batch`; return the logits of the
        tokens at indices `outputs` (ascending), one row each. On a failure the tokens' cells are removed again."""
        lib, batch, n = self._lib, self._batch, len(ids)
        want = set(outputs)
        rows: list[np.ndarray] = []
        with self.lock:
            if not self._close.alive:
                raise LlamaCppError(f"the llama.cpp context of {self.name!r} is closed.")
            self._reclaim()
            for start in range(0, n, self.n_batch):
                end = min(n, start + self.n_batch)
                for j, i in enumerate(range(start, end)):
                    batch.token[j] = ids[i]
                    batch.pos[j] = pos[i]
                    batch.n_seq_id[j] = 1
                    batch.seq_id[j][0] = seqs[i]
                    batch.logits[j] = i in want
                batch.n_tokens = end - start
                rc = lib.llama_decode(self._ctx, batch)
                if rc != 0:
                    self._undo(pos[:end], seqs[:end])
                    raise LlamaCppError(self._decode_problem(rc))
                for j, i in enumerate(range(start, end)):
                    if i in want:
                        ptr = lib.llama_get_logits_ith(self._ctx, j)
                        rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy())
        return np.stack(rows) if rows else np.empty((0, self.n_vocab), dtype=np.float32)

    def _undo(self, pos: Sequence[int], seqs: Sequence[int]) -> None:
        first: dict[int, int] = {}
        for p, s in zip(pos, seqs, strict=True):
            first[s] = min(p, first.get(s, p))
        for s, p in first.items():
            self._lib.llama_memory_seq_rm(self._mem, s, p, -1)

    def _decode_problem(self, rc: int) -> str:
        if rc == 1:
            return (
                f"llama.cpp found no free KV cells for this step: the context's {self.n_cells} cells are shared by "
                "every cache and margin row of this backend; load the model with a larger n_ctx or run fewer "
                "documents at once."
            )
        return f"llama_decode failed with status {rc} on {self.name!r}."

    def _append(self, cache: LlamaCppCache, ids: Sequence[int], *, logits: bool) -> np.ndarray:
        """Append `ids` to the cache's sequence; the last token's logits (shape (1, vocab)) when asked."""
        base = len(cache.tokens)
        if base + len(ids) > (self.max_context_tokens or 0):
            raise LlamaCppError(
                f"{base + len(ids)} tokens do not fit this backend's window of {self.max_context_tokens} (n_ctx)."
            )
        out = self._decode(
            ids, range(base, base + len(ids)), [cache.seq_id] * len(ids), [len(ids) - 1] if logits else []
        )
        cache.tokens.extend(ids)
        return out

    def prefill(self, cache: LlamaCppCache, ids: Sequence[int]) -> None:
        if ids:
            self._append(cache, ids, logits=False)

    def generate(self, cache: LlamaCppCache, request: GenerationRequest) -> Generator[int, None, None]:
        if not request.prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        sampler = _Sampler(request.sampling)
        history = list(request.prompt_ids)
        logits = self._append(cache, request.prompt_ids, logits=True)[0]
        for step in range(request.max_new_tokens):
            token = sampler.next_token(history, logits)
            if token in self.stop_ids:
                return
            history.append(token)
            if request.logprobs is not None:
                request.logprobs.append(_logprob(logits, token))
            yield token
            if step + 1 < request.max_new_tokens:  # no decode after the last token
                logits = self._append(cache, [token], logits=True)[0]

    def _row_seqs(self, cache: LlamaCppCache, rows: Sequence[PackedRow]) -> list[int]:
        """A sequence per row sharing the cache's cells of its prefix (cell membership copied, no keys/values)."""
        seqs: list[int] = []
        try:
            for r in rows:
                seqs.append(self._acquire())
                if r.prefix_length:
                    self._lib.llama_memory_seq_cp(self._mem, cache.seq_id, seqs[-1], 0, r.prefix_length)
        except BaseException:
            for s in seqs:
                self._release(s)
            raise
        return seqs

    def generate_packed(
        self,
        cache: LlamaCppCache,
        rows: Sequence[PackedRow],
        max_new_tokens: int,
        sampling: SamplingConfig,
        done: Callable[[int, list[int]], bool] | None = None,
        logprobs: Sequence[list[float]] | None = None,
    ) -> Generator[list[tuple[int, int]], None, None]:
        """Every row a sequence of its own over the cache's cells up to its prefix: the rows' prompts in one batch,
        then one token per running row per `llama_decode`. A row leaves at a stop token, its budget or `done`."""
        if not rows:
            return
        _check_rows(rows, len(cache.tokens))
        samplers = [_Sampler(sampling) for _ in rows]
        histories = [list(r.prompt_ids) for r in rows]
        next_pos = [r.prefix_length + len(r.prompt_ids) for r in rows]
        with self.lock:
            seqs = self._row_seqs(cache, rows)
        try:
            ends = list(_cumsum(len(r.prompt_ids) for r in rows))
            logits = self._decode(
                [t for r in rows for t in r.prompt_ids],
                [r.prefix_length + k for r in rows for k in range(len(r.prompt_ids))],
                [s for r, s in zip(rows, seqs, strict=True) for _ in r.prompt_ids],
                [e - 1 for e in ends],
            )
            active = list(range(len(rows)))
            produced = [0] * len(rows)
            while active:
                step: list[tuple[int, int]] = []
                feed: list[int] = []
                for j, i in enumerate(active):
                    token = samplers[i].next_token(histories[i], logits[j])
                    if token in self.stop_ids:
                        continue
                    histories[i].append(token)
                    if logprobs is not None:
                        logprobs[i].append(_logprob(logits[j], token))
                    produced[i] += 1
                    step.append((i, token))
                    finished = done is not None and done(i, histories[i][len(rows[i].prompt_ids) :])
                    if produced[i] < max_new_tokens and not finished:  # no decode after a row's last token
                        feed.append(i)
                if step:
                    yield step
                active = feed
                if active:
                    logits = self._decode(
                        [histories[i][-1] for i in active],
                        [next_pos[i] + produced[i] - 1 for i in active],
                        [seqs[i] for i in active],
                        range(len(active)),
                    )
        finally:
            for s in seqs:
                self._release(s)

    def score_rows(
        self, cache: LlamaCppCache, rows: Sequence[Sequence[int] | PackedRow], next_ids: Sequence[int] = ()
    ) -> list[RowScores]:
        """Every row read on its own sequence over its cache prefix, all in one batch with every token's logits."""
        base = len(cache.tokens)
        packed = [r if isinstance(r, PackedRow) else PackedRow(base, r) for r in rows]
        _check_rows(packed, base)
        if not packed:
            return []
        with self.lock:
            seqs = self._row_seqs(cache, packed)
        try:
            n = sum(len(r.prompt_ids) for r in packed)
            logits = self._decode(
                [t for r in packed for t in r.prompt_ids],
                [r.prefix_length + k for r in packed for k in range(len(r.prompt_ids))],
                [s for r, s in zip(packed, seqs, strict=True) for _ in r.prompt_ids],
                range(n),
            )
        finally:
            for s in seqs:
                self._release(s)
        starts = [0, *_cumsum(len(r.prompt_ids) for r in packed)]
        return [
            _row_scores(logits[a:b], r.prompt_ids, next_ids)
            for a, b, r in zip(starts, starts[1:], packed, strict=False)
        ]


def _free_context(lib: Any, ctx: Any, batch: Any) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)


def _check_rows(rows: Sequence[PackedRow], base: int) -> None:
    for r in rows:
        if not r.prompt_ids:
            raise ValueError("a row needs at least one prompt token")
        if not 0 <= r.prefix_length <= base:
            raise ValueError(f"row prefix {r.prefix_length} is outside the cache (length {base})")
        if r.aside is not None:
            raise ValueError("the llama.cpp backend computes no prompt asides (capabilities.kv_asides is False)")


def _cumsum(values: Any) -> Generator[int, None, None]:
    total = 0
    for v in values:
        total += v
        yield total


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _logprob(logits: np.ndarray, token: int) -> float:
    """log P(token) under the model's own distribution, before any sampling processor."""
    return float(_log_softmax(logits)[token])


def _row_scores(logits: np.ndarray, row: Sequence[int], next_ids: Sequence[int]) -> RowScores:
    """`logits[j]` predicts the token after `row[j]`."""
    logp = _log_softmax(logits)
    token_lp = [float(logp[j, row[j + 1]]) for j in range(len(row) - 1)]
    return RowScores(token_lp, {int(t): float(logp[-1, t]) for t in next_ids})


class _Sampler:
    """Greedy argmax, or the transformers processors' arithmetic (repetition penalty, temperature, top-k, top-p)
    and a draw, in numpy."""

    def __init__(self, cfg: SamplingConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed) if cfg.do_sample else None

    def next_token(self, history: list[int], logits: np.ndarray) -> int:
        cfg = self.cfg
        scores = logits.astype(np.float64)
        if cfg.repetition_penalty != 1.0 and history:
            seen = np.unique(np.asarray(history))
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * cfg.repetition_penalty, s / cfg.repetition_penalty)
        if self.rng is None:
            return int(np.argmax(scores))
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k and cfg.top_k < scores.size:
            kth = np.partition(scores, -cfg.top_k)[-cfg.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        if cfg.top_p < 1.0:
            order = np.argsort(scores)  # ascending, as transformers' TopPLogitsWarper
            probs = np.exp(scores[order] - scores[order][-1])
            cum = np.cumsum(probs / probs.sum())
            drop = cum <= 1 - cfg.top_p
            drop[-1] = False  # the most likely token always stays
            scores[order[drop]] = -np.inf
        p = np.exp(scores - scores.max())
        return int(self.rng.choice(scores.size, p=p / p.sum()))
