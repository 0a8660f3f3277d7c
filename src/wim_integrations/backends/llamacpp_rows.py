"""Margin rows on llama.cpp, decoded one `llama_decode` per step, optionally while their cache is read further.

A row is a sequence of its own that shares the cache's KV cells up to its prefix (`llama_memory_seq_cp` copies cell
membership, not keys/values), so it attends to that prefix and to itself only. A step puts into one batch whatever is
pending: tokens appended to the cache (the next segment being read; no row sees them), the prompt tokens of rows added
since the last step, and the last token of every running row; then every row with fresh logits samples its next
token. `LlamaCppBackend.generate_packed` is this with every row added at once and nothing prefilled; the reading loop's
overlap adds a row as soon as its segment is read and steps with the next segment's tokens (the paper's overlap)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import SamplingConfig
from .base import PackedRow, check_rows
from .np_sampling import Sampler, logprob, masked
from .span import SpanConstraint, SpanMatcher


class _Cache(Protocol):
    seq_id: int
    tokens: list[int]


class _Sequences(Protocol):
    """What the rows need of `LlamaCppBackend` (named here, not imported: that module imports this one)."""

    stop_ids: frozenset[int]
    max_context_tokens: int | None

    def window_error(self, n_tokens: int) -> Exception: ...

    def _open_row(self, cache: Any, row: PackedRow) -> tuple[int, int]: ...

    def _release(self, seq_id: int) -> None: ...

    def _decode(
        self, ids: Sequence[int], pos: Sequence[int], seqs: Sequence[int], outputs: Sequence[int]
    ) -> list[np.ndarray]: ...


@dataclass
class _Row:
    seq: int
    prompt_len: int
    history: list[int]  # the prompt, then the row's tokens (the sampler's repetition penalty reads it)
    sampler: Sampler
    quote: SpanMatcher | None
    logprobs: list[float] | None
    pending: list[int]  # tokens to compute in the next step (the prompt's rest, then the last sampled token)
    first_pos: int  # the position of pending[0]
    logits: np.ndarray | None = None  # fresh logits: the row samples its next token from them
    produced: int = 0
    finished: bool = False
    released: bool = field(default=False, repr=False)


class LlamaCppRows:
    """`RowDecoder` on llama.cpp. Not thread-safe by itself: one reading loop drives it (every call into the context
    holds the backend's lock)."""

    def __init__(
        self,
        backend: _Sequences,
        cache: _Cache,
        max_new_tokens: int,
        sampling: SamplingConfig,
        done: Callable[[int, list[int]], bool] | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError("rows need max_new_tokens >= 1")
        self.backend, self.cache = backend, cache
        self.max_new_tokens, self.sampling, self.done = max_new_tokens, sampling, done
        self.rows: list[_Row] = []

    @property
    def running(self) -> bool:
        return any(not r.finished for r in self.rows)

    def add(self, row: PackedRow, logprobs: list[float] | None = None, span: SpanConstraint | None = None) -> int:
        check_rows([row], len(self.cache.tokens))
        a = row.aside
        if a is not None and len(a.prompt_ids) == len(row.prompt_ids) and a.last_logits is None:
            raise ValueError("a row's prompt is all aside but its last logits were not kept (aside_head)")
        seq, held = self.backend._open_row(self.cache, row)
        n = len(row.prompt_ids)
        r = _Row(
            seq=seq,
            prompt_len=n,
            history=list(row.prompt_ids),
            sampler=Sampler(self.sampling),
            quote=span.start() if span is not None else None,
            logprobs=logprobs,
            pending=list(row.prompt_ids[held:]),
            first_pos=row.prefix_length + held,
        )
        if not r.pending:  # the whole prompt was computed aside: its last logits are the row's first
            assert a is not None and a.last_logits is not None
            r.logits = np.asarray(a.last_logits)
        self.rows.append(r)
        return len(self.rows) - 1

    def step(self, prefill: Sequence[int] = ()) -> list[tuple[int, int]]:
        b, cache = self.backend, self.cache
        base = len(cache.tokens)
        if prefill and base + len(prefill) > (b.max_context_tokens or 0):
            raise b.window_error(base + len(prefill))
        fed = [r for r in self.rows if r.pending and not r.finished]
        ids = [*prefill, *(t for r in fed for t in r.pending)]
        if ids:
            pos = [*range(base, base + len(prefill)), *(r.first_pos + k for r in fed for k in range(len(r.pending)))]
            seqs = [cache.seq_id] * len(prefill) + [r.seq for r in fed for _ in r.pending]
            outputs, end = [], len(prefill)
            for r in fed:
                end += len(r.pending)
                outputs.append(end - 1)
            logits = b._decode(ids, pos, seqs, outputs)
            cache.tokens.extend(prefill)
            for r, row_logits in zip(fed, logits, strict=True):
                r.first_pos += len(r.pending)
                r.pending = []
                r.logits = row_logits
        return [out for i, r in enumerate(self.rows) if r.logits is not None and (out := self._sample(i, r))]

    def _sample(self, i: int, r: _Row) -> tuple[int, int] | None:
        """The row's next token from its fresh logits; None where the row ends instead (its stop token, or a quote
        that cannot go on)."""
        logits, r.logits = r.logits, None
        assert logits is not None
        scores = logits
        if r.quote is not None:
            allowed = r.quote.allowed_ids(self.backend.stop_ids)
            if allowed is None:
                self._finish(r)
                return None
            scores = masked(logits, allowed)
        token = r.sampler.next_token(r.history, scores)
        if token in self.backend.stop_ids:
            self._finish(r)
            return None
        if r.quote is not None:
            r.quote.push(token)
        r.history.append(token)
        if r.logprobs is not None:
            r.logprobs.append(logprob(logits, token))
        r.produced += 1
        if r.produced >= self.max_new_tokens or (self.done is not None and self.done(i, r.history[r.prompt_len :])):
            self._finish(r)  # no decode after a row's last token
        else:
            r.pending = [token]
        return i, token

    def _finish(self, r: _Row) -> None:
        r.finished = True
        if not r.released:
            r.released = True
            self.backend._release(r.seq)

    def close(self) -> None:
        for r in self.rows:
            self._finish(r)

    def __enter__(self) -> LlamaCppRows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
