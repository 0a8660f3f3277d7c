"""The WiM backend on llama.cpp in this process, through llama-cpp-python's low-level API (no torch).

One llama context with a unified KV cache holds every sequence WiM uses. A WiM cache is one sequence id and the
tokens it holds; rollback is `llama_memory_seq_rm`. A packed row is a sequence of its own that shares the document's
KV cells up to its segment's end (`llama_memory_seq_cp` copies cell membership, not keys/values), so all rows decode
together in one `llama_decode` batch per step and each attends to its prefix and itself only; the rows' sequences are
removed when the iterator ends, which leaves the document's sequence as it was (docs/architecture.md).

A document kept beyond a run (a document cache entry) stays in its KV cells, on a sequence of its own: the context's
KV buffer is allocated once, so keeping it costs no memory, and the next question forks it by cell membership. Only
when a decode finds no free cells are kept documents spilled: saved to host memory (`llama_state_seq_get_data`) and
their cells freed, to be loaded again by the next fork that finds room. Margin heads kept with a document are saved
states from the start (a few dozen tokens each); prompt asides within a run stay in cells, on a sequence of their
own."""

from __future__ import annotations

import ctypes
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import SamplingConfig
from ..errors import LlamaCppError, WiMInputError
from .base import Capabilities, GenerationRequest, PackedRequest, PackedRow, PromptAside, RowScores, check_rows
from .gguf_tokenizer import GGUFTokenizer
from .llamacpp_rows import LlamaCppRows
from .np_sampling import Sampler, cumsum, logprob, logprobs_at, masked, row_picks, row_scores
from .tokenizer import TokenizerMethods


class LlamaCppCache:
    """A WiM cache on llama.cpp: one sequence of the backend's context and the tokens it holds (positions 0..n-1).
    Its sequence is freed when the cache is garbage-collected."""

    __slots__ = ("__weakref__", "seq_id", "tokens")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []


class KeptCache:
    """A document cache entry: its tokens on a sequence of its own, in KV cells, or spilled (`state`: the sequence
    saved to host memory, its cells freed). Its sequence is freed when the entry is garbage-collected."""

    __slots__ = ("__weakref__", "seq_id", "state", "tokens")

    def __init__(self, seq_id: int, tokens: tuple[int, ...]) -> None:
        self.seq_id = seq_id
        self.tokens = tokens
        self.state: Any = None  # a ctypes uint8 array while spilled

    @property
    def spilled(self) -> bool:
        return self.state is not None


class _SeqKV:
    """An aside's keys/values kept in KV cells, on a sequence of its own (freed with this object)."""

    __slots__ = ("__weakref__", "seq_id")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id


@dataclass(frozen=True)
class _SavedKV:
    """An aside's keys/values saved to host memory."""

    state: Any


MAX_OUTPUTS = 64  # logits rows per llama_decode (llama.cpp keeps its output buffer at the largest batch's size)


def default_threads() -> int:
    """Half the cores, as llama-cpp-python's `Llama` picks (ggml's threads spin: more than the cores is slower)."""
    return max(1, (os.cpu_count() or 2) // 2)


class LlamaCppBackend(TokenizerMethods):
    """Runs a GGUF model loaded by llama.cpp. Thread-safe: every call into the context holds `lock`.

    `model` is a `llama_model` pointer; `owner` keeps whatever owns it alive (a `llama_cpp.Llama`, or the loader that
    frees it). `n_ctx` is the longest sequence (the context window WiM plans with); the context gets `n_ctx * 3 // 2`
    KV cells, the extra half for the margins' rows and the scoring sequences that share the document's cells.
    `keep_documents=False` declares no prompt asides and no document cache (every question reads its document)."""

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        n_ctx: int,
        n_threads: int | None = None,
        n_seq_max: int = 128,
        n_batch: int = 2048,
        keep_documents: bool = True,
        owner: Any = None,
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
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
        self.cache_namespace = f"{name}:{uuid.uuid4().hex}"  # document-cache keys: this loaded model only
        self.keep_documents = keep_documents
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
        self.n_cells = int(llama_cpp.llama_n_ctx(ctx))
        self._free_seqs = list(range(n_seq_max - 1, -1, -1))
        self._released: list[int] = []  # sequences of collected caches, freed at the next call (no lock in a finalizer)
        self._kept: weakref.WeakSet[KeptCache] = weakref.WeakSet()  # spilled when a decode finds no free cells
        # The finalizer holds the owner: the model outlives the context made on it.
        self._close = weakref.finalize(self, _free_context, llama_cpp, ctx, self._batch, owner)

    def close(self) -> None:
        """Free the llama.cpp context now (the model belongs to its owner)."""
        with self.lock:
            self._close()

    @property
    def capabilities(self) -> Capabilities:
        keep = self.keep_documents
        return Capabilities(
            packed_rows=True,
            scoring="rows",
            generation_logprobs=True,
            kv_asides=keep,
            local_document_cache=keep,
            constrained_margins=True,
            overlap=True,
        )

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

    def _owned_seq(self, holder: LlamaCppCache | KeptCache | _SeqKV) -> None:
        weakref.finalize(holder, self._released.append, holder.seq_id)

    def _release(self, seq_id: int) -> None:
        with self.lock:
            if not self._close.alive:  # the context is gone, and its cells with it
                return
            self._lib.llama_memory_seq_rm(self._mem, seq_id, -1, -1)
            self._free_seqs.append(seq_id)

    def _reclaim(self) -> None:
        while self._released:
            self._release(self._released.pop())

    def _check_open(self) -> None:
        if not self._close.alive:
            raise LlamaCppError(f"the llama.cpp context of {self.name!r} is closed.")

    def new_cache(self) -> LlamaCppCache:
        cache = LlamaCppCache(self._acquire())
        self._owned_seq(cache)
        return cache

    def cache_length(self, cache: LlamaCppCache | KeptCache) -> int:
        return len(cache.tokens)

    def rollback(self, cache: LlamaCppCache, length: int) -> None:
        if length > len(cache.tokens) or length < 0:
            raise ValueError(f"cannot roll a cache of {len(cache.tokens)} tokens to {length}")
        with self.lock:
            if self._close.alive:
                self._lib.llama_memory_seq_rm(self._mem, cache.seq_id, length, -1)
            del cache.tokens[length:]

    # -- saved states (document cache) -------------------------------------------------------------------
    def _save(self, seq_id: int) -> Any:
        lib = self._lib
        with self.lock:
            self._check_open()
            size = lib.llama_state_seq_get_size(self._ctx, seq_id)
            state = (ctypes.c_uint8 * size)()
            if size == 0 or lib.llama_state_seq_get_data(self._ctx, state, size, seq_id) != size:
                raise LlamaCppError(f"llama.cpp could not save a sequence state of {self.name!r}.")
        return state

    def _restore(self, state: Any, seq_id: int) -> bool:
        """Load a saved state into an empty sequence; False where the KV cache has no room for it."""
        with self.lock:
            self._check_open()
            return bool(self._lib.llama_state_seq_set_data(self._ctx, state, len(state), seq_id))

    def fork_cache(self, cache: LlamaCppCache | KeptCache) -> LlamaCppCache:
        """A new sequence with the same cells (no keys/values copied). A spilled document is loaded into its cells
        again first; one that finds no room is computed again from its tokens: correct, only slower."""
        fork = self.new_cache()
        with self.lock:
            if isinstance(cache, KeptCache) and cache.spilled and self._restore(cache.state, cache.seq_id):
                cache.state = None
            if isinstance(cache, KeptCache) and cache.spilled:
                self.prefill(fork, cache.tokens)
            else:
                if cache.tokens:
                    self._lib.llama_memory_seq_cp(self._mem, cache.seq_id, fork.seq_id, 0, len(cache.tokens))
                fork.tokens = list(cache.tokens)
        return fork

    def compact_cache(self, cache: LlamaCppCache | KeptCache) -> KeptCache:
        """The document kept on a sequence of its own, sharing the cache's cells (the run's sequence may go)."""
        if isinstance(cache, KeptCache):
            return cache
        with self.lock:
            kept = KeptCache(self._acquire(), tuple(cache.tokens))
            self._owned_seq(kept)
            if kept.tokens:
                self._lib.llama_memory_seq_cp(self._mem, cache.seq_id, kept.seq_id, 0, len(kept.tokens))
            self._kept.add(kept)
        return kept

    def _spill(self) -> bool:
        """Save every kept document still in cells to host memory and free its cells; False if there was none."""
        with self.lock:
            live = [k for k in self._kept if not k.spilled and k.tokens]
            for k in live:
                k.state = self._save(k.seq_id)
                self._lib.llama_memory_seq_rm(self._mem, k.seq_id, -1, -1)
        return bool(live)

    def filled_nbytes(self, cache: LlamaCppCache | KeptCache) -> int:
        """Bytes a saved copy of the cache takes: what a kept document takes in host memory once spilled, and what
        the `DocumentCache` charges for it (in cells it takes none beyond the context's KV buffer)."""
        if isinstance(cache, KeptCache) and cache.spilled:
            return len(cache.state)
        with self.lock:
            self._check_open()
            return int(self._lib.llama_state_seq_get_size(self._ctx, cache.seq_id))

    def cache_nbytes(self, cache: LlamaCppCache | KeptCache) -> int:
        # Live cells sit in the context's preallocated KV buffer: charged as the saved copy they may become.
        return self.filled_nbytes(cache)

    def reserve(self, cache: LlamaCppCache, n_tokens: int) -> None:
        """Nothing to do: the KV cells are allocated with the context."""

    # -- compute -----------------------------------------------------------------------------------------
    def _decode(
        self,
        ids: Sequence[int],
        pos: Sequence[int],
        seqs: Sequence[int],
        outputs: Sequence[int],
        take: Callable[[int, np.ndarray], Any] | None = None,
    ) -> list[Any]:
        """Decode tokens (each at its position in its sequence) in batches; return, per index in `outputs`
        (ascending), a copy of that token's logits, or `take(k, logits)` for the k-th output where given (`logits` is
        a view into llama.cpp's buffer, valid during the call only: reduce it there, and a long scored row never
        holds every vocabulary-wide row at once). A batch asks for at most `MAX_OUTPUTS` logits, so llama.cpp's
        output buffer stays within what the context reserved for its sequences. On a failure the tokens' cells are
        removed again."""
        lib, batch, n = self._lib, self._batch, len(ids)
        want = set(outputs)
        out: list[Any] = []
        with self.lock:
            self._check_open()
            self._reclaim()
            start = 0
            while start < n:
                end, asked = start, 0
                while end < n and end - start < self.n_batch and asked < MAX_OUTPUTS:
                    asked += end in want
                    end += 1
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
                    if rc == 1 and self._spill():  # no free cells: kept documents make room, then all again
                        return self._decode(ids, pos, seqs, outputs, take)
                    raise LlamaCppError(self._decode_problem(rc))
                for j, i in enumerate(range(start, end)):
                    if i in want:
                        view = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, j), shape=(self.n_vocab,))
                        out.append(view.copy() if take is None else take(len(out), view))
                start = end
        return out

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

    def _append(self, cache: LlamaCppCache, ids: Sequence[int], *, logits: bool) -> list[np.ndarray]:
        """Append `ids` to the cache's sequence; the last token's logits (a list of one) when asked."""
        base = len(cache.tokens)
        if base + len(ids) > (self.max_context_tokens or 0):
            raise self.window_error(base + len(ids))
        n = len(ids)
        out = self._decode(ids, range(base, base + n), [cache.seq_id] * n, [n - 1] if logits else [])
        cache.tokens.extend(ids)
        return out

    def window_error(self, n_tokens: int) -> LlamaCppError:
        window = self.max_context_tokens
        return LlamaCppError(f"{n_tokens} tokens do not fit this backend's window of {window} (n_ctx).")

    def prefill(self, cache: LlamaCppCache, ids: Sequence[int]) -> None:
        if ids:
            self._append(cache, ids, logits=False)

    def generate(self, cache: LlamaCppCache, request: GenerationRequest) -> Generator[int, None, None]:
        if not request.prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        sampler = Sampler(request.sampling)
        history = list(request.prompt_ids)
        quote = request.span.start() if request.span is not None else None
        logits = self._append(cache, request.prompt_ids, logits=True)[0]
        for step in range(request.max_new_tokens):
            scores = logits
            if quote is not None:
                allowed = quote.allowed_ids(self.stop_ids)
                if allowed is None:  # the quote cannot go on: it ends here, as at a stop token
                    return
                scores = masked(logits, allowed)
            token = sampler.next_token(history, scores)
            if token in self.stop_ids:
                return
            if quote is not None:
                quote.push(token)
            history.append(token)
            if request.logprobs is not None:
                request.logprobs.append(logprob(logits, token))
            yield token
            if step + 1 < request.max_new_tokens:  # no decode after the last token
                logits = self._append(cache, [token], logits=True)[0]

    # -- prompt asides -------------------------------------------------------------------------------------
    def prefill_aside(self, cache: LlamaCppCache, prompt_ids: Sequence[int]) -> PromptAside:
        """The prompt decoded on top of the cache, its cells moved to a sequence of their own, the cache rolled back."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token")
        base = len(cache.tokens)
        with self.lock:
            try:
                logits = self._append(cache, prompt_ids, logits=True)[0]
                kv = _SeqKV(self._acquire())
                self._owned_seq(kv)
                self._lib.llama_memory_seq_cp(self._mem, cache.seq_id, kv.seq_id, base, base + len(prompt_ids))
            finally:
                self.rollback(cache, base)
        return PromptAside(base, list(prompt_ids), kv, logits)

    def take_aside(self, cache: LlamaCppCache, start: int, prompt_ids: Sequence[int]) -> PromptAside:
        """A saved copy of the cells `prompt_ids` hold in the cache at `start` (kept beyond the run: host memory)."""
        end = start + len(prompt_ids)
        if end > len(cache.tokens) or list(cache.tokens[start:end]) != list(prompt_ids):
            raise ValueError(f"the cache does not hold these {len(prompt_ids)} prompt tokens at {start}")
        return PromptAside(start, list(prompt_ids), self._saved_range(cache.seq_id, start, end), None)

    def aside_head(self, aside: PromptAside, n_tokens: int) -> PromptAside:
        """The first `n_tokens` of an aside, saved on their own (no logits)."""
        start = aside.prefix_length
        with self.lock:
            if isinstance(aside.kv, _SeqKV):
                kv = self._saved_range(aside.kv.seq_id, start, start + n_tokens)
            else:
                tmp = self._acquire()
                try:
                    if not self._restore(aside.kv.state, tmp):
                        raise LlamaCppError(self._decode_problem(1))
                    self._lib.llama_memory_seq_rm(self._mem, tmp, start + n_tokens, -1)
                    kv = _SavedKV(self._save(tmp))
                finally:
                    self._release(tmp)
        return PromptAside(start, list(aside.prompt_ids[:n_tokens]), kv, None)

    def _saved_range(self, seq_id: int, start: int, end: int) -> _SavedKV:
        with self.lock:
            tmp = self._acquire()
            try:
                self._lib.llama_memory_seq_cp(self._mem, seq_id, tmp, start, end)
                return _SavedKV(self._save(tmp))
            finally:
                self._release(tmp)

    def aside_nbytes(self, aside: PromptAside) -> int:
        logits = aside.last_logits.nbytes if aside.last_logits is not None else 0
        if isinstance(aside.kv, _SavedKV):
            return len(aside.kv.state) + logits
        with self.lock:
            return int(self._lib.llama_state_seq_get_size(self._ctx, aside.kv.seq_id)) + logits

    # -- rows ----------------------------------------------------------------------------------------------
    def _row_seqs(self, cache: LlamaCppCache, rows: Sequence[PackedRow]) -> tuple[list[int], list[int]]:
        """A sequence per row: its aside's cells (if any), then the cache's cells of its prefix (cell membership
        copied, no keys/values). Returns the sequences and how many prompt tokens each already holds."""
        seqs: list[int] = []
        held: list[int] = []
        with self.lock:
            try:
                for r in rows:
                    seqs.append(self._acquire())
                    held.append(self._install(r, seqs[-1]))
                    if r.prefix_length:
                        self._lib.llama_memory_seq_cp(self._mem, cache.seq_id, seqs[-1], 0, r.prefix_length)
            except BaseException:
                for s in seqs:
                    self._release(s)
                raise
        return seqs, held

    def _open_row(self, cache: LlamaCppCache, row: PackedRow) -> tuple[int, int]:
        """A sequence for one row (as `_row_seqs`): its id and how many prompt tokens it already holds."""
        seqs, held = self._row_seqs(cache, [row])
        return seqs[0], held[0]

    def _install(self, row: PackedRow, seq: int) -> int:
        """Put the row's aside into `seq` (empty); the prompt tokens it holds (0 where a saved one finds no room)."""
        a = row.aside
        if a is None:
            return 0
        n = len(a.prompt_ids)
        if isinstance(a.kv, _SeqKV):
            self._lib.llama_memory_seq_cp(self._mem, a.kv.seq_id, seq, a.prefix_length, a.prefix_length + n)
            return n
        if self._restore(a.kv.state, seq):
            return n
        self._lib.llama_memory_seq_rm(self._mem, seq, -1, -1)
        return 0

    def generate_packed(
        self, cache: LlamaCppCache, request: PackedRequest
    ) -> Generator[list[tuple[int, int]], None, None]:
        """Every row a sequence of its own over the cache's cells up to its prefix (`LlamaCppRows`): the rows'
        prompts (but for parts computed aside) in one batch, then one token per running row per `llama_decode`. A row
        leaves at a stop token, its budget or `done`."""
        rows = request.rows
        check_rows(rows, len(cache.tokens))
        spans = request.spans if request.spans is not None else [None] * len(rows)
        if len(spans) != len(rows):
            raise ValueError(f"{len(spans)} span constraints for {len(rows)} rows")
        decoder = self.open_rows(cache, request.max_new_tokens, request.sampling, request.done)
        try:
            for i, r in enumerate(rows):
                decoder.add(r, request.logprobs[i] if request.logprobs is not None else None, spans[i])
            while decoder.running:
                if step := decoder.step():
                    yield step
        finally:
            decoder.close()

    def open_rows(
        self,
        cache: LlamaCppCache,
        max_new_tokens: int,
        sampling: SamplingConfig,
        done: Callable[[int, list[int]], bool] | None = None,
    ) -> LlamaCppRows:
        """Rows decoded step by step, while `step(prefill)` goes on reading into `cache` (see `LlamaCppRows`)."""
        return LlamaCppRows(self, cache, max_new_tokens, sampling, done)

    def score_rows(
        self,
        cache: LlamaCppCache,
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,
    ) -> list[RowScores]:
        """Every row read on its own sequence over its cache prefix, all in one batch. Scores start after the first
        token computed (after the aside, where a row has one). With `tails` only the logits of each row's last
        `tails[i]` tokens (and of its next token) are computed, the earlier log P left NaN: an output row costs a
        pass through the output layer, most of a small model's compute with a large vocabulary (Gemma 3: 262k)."""
        base = len(cache.tokens)
        packed = [r if isinstance(r, PackedRow) else PackedRow(base, r) for r in rows]
        check_rows(packed, base)
        if not packed:
            return []
        if tails is not None and len(tails) != len(packed):
            raise ValueError(f"{len(tails)} tails for {len(packed)} rows")
        aside_len = [len(r.aside.prompt_ids) if r.aside is not None else 0 for r in packed]
        if any(n == len(r.prompt_ids) for n, r in zip(aside_len, packed, strict=True)):
            raise ValueError("a scored row must compute at least one token after its aside")
        # Per row, how many of its scored tokens need no logits (their log P is not asked for).
        skips = [
            0 if tails is None else max(0, len(r.prompt_ids) - n - 1 - max(0, t))
            for r, n, t in zip(packed, aside_len, tails or [0] * len(packed), strict=True)
        ]
        seqs, held = self._row_seqs(cache, packed)
        try:
            starts = [0, *cumsum(len(r.prompt_ids) - h for r, h in zip(packed, held, strict=True))]
            # A saved aside that found no room is computed here: its positions are not read, so every row is
            # scored from the same token on whatever happened.
            wanted = [
                a + k - h
                for a, r, n, h, skip in zip(starts, packed, aside_len, held, skips, strict=False)
                for k in range(n + skip, len(r.prompt_ids))
            ]
            picks = [
                p
                for r, n, skip in zip(packed, aside_len, skips, strict=True)
                for p in row_picks(r.prompt_ids[n + skip :], next_ids)
            ]
            picked = self._decode(
                [t for r, h in zip(packed, held, strict=True) for t in r.prompt_ids[h:]],
                [r.prefix_length + k for r, h in zip(packed, held, strict=True) for k in range(h, len(r.prompt_ids))],
                [s for r, s, h in zip(packed, seqs, held, strict=True) for _ in r.prompt_ids[h:]],
                wanted,
                take=lambda k, logits: logprobs_at(logits, picks[k]),  # a few floats kept per position
            )
        finally:
            for s in seqs:
                self._release(s)
        out, at = [], 0
        for r, n, skip in zip(packed, aside_len, skips, strict=True):
            count = len(r.prompt_ids) - n - skip
            scores = row_scores(picked[at : at + count], next_ids)
            out.append(RowScores([float("nan")] * skip + scores.token_logprobs, scores.next_logprobs))
            at += count
        return out


def _free_context(lib: Any, ctx: Any, batch: Any, owner: Any) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    del owner  # now the model may go
