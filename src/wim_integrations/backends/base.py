"""The backend protocol: prefill into a cache, remember its length, generate from it, roll it back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..config import SamplingConfig


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # When given, the backend appends log P(token) of every yielded token here, under the model's own distribution
    # (before sampling processors): the margin's likelihood given what was read, used by relevance scoring.
    logprobs: list[float] | None = None


@dataclass(frozen=True)
class RowScores:
    """Teacher-forced log-probabilities of one row read on top of a cache (see `score_rows`)."""

    token_logprobs: list[float]  # log P(row[j] | cache, row[:j]) for j >= 1
    next_logprobs: dict[int, float]  # log P(t | cache, row) for each asked-for next token t


@dataclass(frozen=True)
class PromptAside:
    """A prompt computed on top of a cache prefix and taken out of the cache again: its keys/values (backend
    specific) and the logits of its last token (None for a head cut from a longer prompt), kept to be packed into a
    later `generate_packed` call."""

    prefix_length: int
    prompt_ids: Sequence[int]
    kv: Any
    last_logits: Any | None


@dataclass(frozen=True)
class PackedRow:
    """One row of a packed generation: it sees the first `prefix_length` cache tokens, then its own prompt.

    With `aside` (from `prefill_aside` on that same prefix, or its `aside_head`) the prompt's first
    `len(aside.prompt_ids)` tokens are not computed again."""

    prefix_length: int
    prompt_ids: Sequence[int]
    aside: PromptAside | None = None


@runtime_checkable
class Backend(Protocol):
    name: str
    tokenizer: Any
    lock: threading.RLock
    max_context_tokens: int | None
    stop_ids: frozenset[int]

    def encode_text(self, text: str) -> list[int]:
        """Tokens of user text (special-token strings inside it stay plain text)."""

    def encode_template(self, text: str) -> list[int]:
        """Tokens of template text (special-token strings become special tokens)."""

    def decode(self, ids: Sequence[int]) -> str: ...

    def new_cache(self) -> Any: ...

    def cache_length(self, cache: Any) -> int: ...

    def prefill(self, cache: Any, ids: Sequence[int]) -> None:
        """Append `ids` to `cache` without computing logits for them."""

    def generate(self, cache: Any, request: GenerationRequest) -> Iterator[int]:
        """Prefill the prompt, then yield new tokens until a stop id (not yielded) or the budget.

        The last yielded token is never fed back, so the cache ends one token short of prompt + output."""

    def rollback(self, cache: Any, length: int) -> None:
        """Drop everything after the first `length` tokens of `cache`."""

    def score_rows(
        self, cache: Any, rows: Sequence[Sequence[int] | PackedRow], next_ids: Sequence[int] = ()
    ) -> list[RowScores]:
        """Read each row on its own (rows never see each other): a token list on top of the whole cache, a `PackedRow`
        on top of its cache prefix (its aside, if any, not computed again). Returns the log P of every row token after
        the first one computed, and of each of `next_ids` after the row's last token. The cache is left as it was.
        Relevance scoring uses it (a margin without the text, or without its segment; a classifier's first reply
        token). Rows that see less than the whole cache need a packed backend."""


@runtime_checkable
class PackedBackend(Backend, Protocol):
    """A backend that decodes several rows at once over one shared cache (batched margins, document cache)."""

    def generate_packed(
        self,
        cache: Any,
        rows: Sequence[PackedRow],
        max_new_tokens: int,
        sampling: SamplingConfig,
        done: Callable[[int, list[int]], bool] | None = None,
        logprobs: Sequence[list[float]] | None = None,
    ) -> Iterator[list[tuple[int, int]]]:
        """Yield, per decoding step, the (row index, token) pairs of the rows still running.

        Row i attends to the first `rows[i].prefix_length` cache tokens and to its own tokens only, so its output is
        what `generate` would give on a cache cut at that length. A row stops at its first stop id (not yielded), at
        its budget, or once `done(i, tokens of row i so far)` is true. With `logprobs` (one list per row) the log P of
        each yielded token is appended to its row's list, as `GenerationRequest.logprobs`. The cache is back at its
        starting length once the iterator ends or is closed."""

    def prefill_aside(self, cache: Any, prompt_ids: Sequence[int]) -> PromptAside:
        """Compute `prompt_ids` on top of `cache` (attending to all of it) and leave the cache as it was."""

    def take_aside(self, cache: Any, start: int, prompt_ids: Sequence[int]) -> PromptAside:
        """Copies of the keys/values of `prompt_ids`, already in `cache` at `start` (no logits)."""

    def aside_head(self, aside: PromptAside, n_tokens: int) -> PromptAside:
        """The first `n_tokens` of `aside`, stored on their own (no logits)."""

    def aside_nbytes(self, aside: PromptAside) -> int: ...

    def fork_cache(self, cache: Any) -> Any:
        """A cache that shares `cache`'s tensors without copying them; appending to either leaves the other intact."""

    def cache_nbytes(self, cache: Any) -> int: ...
