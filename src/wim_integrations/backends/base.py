"""The backend protocol: prefill into a cache, remember its length, generate from it, roll it back.

A backend declares what else it can do in `capabilities`; the engine picks its path from them (never by probing for
attributes). The protocols below are layered: `Backend` (every backend), `PackedBackend` (several rows over prefixes of
one cache decoded together), `LocalKVBackend` (keys/values held in this process: prompt asides, forks, byte sizes).
`packed_view`/`local_kv_view` give the engine a typed view where the capabilities allow it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..config import SamplingConfig
from ..errors import WiMInputError
from ..prompts import ChatFrame
from .span import SpanConstraint, SpanMatcher


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond prefill / generate / rollback."""

    # `generate_packed`: rows that each see a prefix of one cache, decoded together (batched margins).
    packed_rows: bool = False
    # `score_rows`: "rows" scores packed rows on their own cache prefixes, "plain" only token rows on the whole cache,
    # "none" nothing (no prompt log-probabilities: PMI and calibrated relevance are not available).
    scoring: Literal["rows", "plain", "none"] = "none"
    # `GenerationRequest.logprobs` is filled (log P of each generated token).
    generation_logprobs: bool = False
    # Prompt keys/values computed aside and packed in later (`LocalKVBackend`).
    kv_asides: bool = False
    # The cache can be forked and measured in bytes, so a `DocumentCache` can keep a read document in this process.
    local_document_cache: bool = False
    # Rows are independent requests sent at once (a server batches them); where false they share one computation.
    concurrent_requests: bool = False
    # Margins decoded under a `SpanConstraint` (`GenerationRequest.span`, `PackedRequest.spans`): quoted margins,
    # `WiMConfig.margin_mode="quote"`. A backend without it refuses a request that carries one.
    constrained_margins: bool = False
    # The paper's overlap: margins decode while the text after them is prefilled. In process, `open_rows` decodes
    # them in the prefill's own batches (`OverlapBackend`); on a server, `PackedRequest.overlap` sends each row as
    # soon as its prefix is cached, and the engine's scheduler batches it with the prefill of the rest.
    overlap: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # When given, the backend appends log P(token) of every yielded token here, under the model's own distribution
    # (before sampling processors): the margin's likelihood given what was read, used by relevance scoring.
    logprobs: list[float] | None = None
    # When given, every token is picked among those the constraint allows (a quote of its source; backends/span.py):
    # the logits are masked before sampling, log-probabilities stay the model's own.
    span: SpanConstraint | None = None


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


@dataclass(frozen=True)
class PackedRequest:
    """Rows decoded together over prefixes of one cache (`PackedBackend.generate_packed`).

    A row ends at its first stop id (not yielded), at `max_new_tokens`, or once `done(row index, its tokens so far)`
    is true (a margin's stop rule). With `logprobs` (one list per row) the log P of each yielded token is appended to
    its row's list, as `GenerationRequest.logprobs`. With `spans` (one per row, None for a free row) each row is
    decoded under its constraint, as `GenerationRequest.span`."""

    rows: Sequence[PackedRow]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    done: Callable[[int, list[int]], bool] | None = None
    logprobs: Sequence[list[float]] | None = None
    spans: Sequence[SpanConstraint | None] | None = None
    # A server that declares `overlap`: send each row as soon as its own prefix is cached, while the server computes
    # the text after it (see `ServerBackend.generate_packed`). In process, rows overlap through `open_rows` instead.
    overlap: bool = False
    # Called by a server backend with (row index, its tokens) as each row ends, before the step with its last token
    # is yielded: work on that row can go to the server while other rows still decode. In process not called (one
    # engine computes one thing at a time: nothing to gain).
    row_ended: Callable[[int, list[int]], None] | None = None

    def span_matchers(self) -> list[SpanMatcher | None]:
        """A fresh matcher per constrained row (None for a free row)."""
        if self.spans is None:
            return [None] * len(self.rows)
        if len(self.spans) != len(self.rows):
            raise ValueError(f"{len(self.spans)} span constraints for {len(self.rows)} rows")
        return [s.start() if s is not None else None for s in self.spans]

    @property
    def constrained(self) -> bool:
        return self.spans is not None and any(s is not None for s in self.spans)


@runtime_checkable
class Backend(Protocol):
    name: str
    lock: threading.RLock
    max_context_tokens: int | None
    # A cache cannot be rolled back to fewer than this many tokens from its end (sliding-window layers); None: any.
    rollback_limit: int | None
    stop_ids: frozenset[int]

    @property
    def capabilities(self) -> Capabilities: ...

    # -- tokens: everything tokenizer-facing goes through the backend ---------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Tokens of user text (special-token strings inside it stay plain text)."""

    def encode_template(self, text: str) -> list[int]:
        """Tokens of template text (special-token strings become special tokens)."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Tokens of user text and the character offset where each starts (the segmenter cuts on these)."""

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat_frame(self) -> ChatFrame:
        """The model's chat template around one user message."""

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A conversation in the chat template, ending where the assistant's reply starts."""

    def min_tokens(self, n_bytes: int) -> int | None:
        """A lower bound on the tokens of any text of `n_bytes` bytes (None: unknown); refuses huge inputs early."""

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        """An incremental decoder step (text added by one more token, None while a character is incomplete), or None
        where only whole-list `decode` is right."""

    # -- the cache ----------------------------------------------------------------------------------------------

    def new_cache(self) -> Any: ...

    def cache_length(self, cache: Any) -> int: ...

    def prefill(self, cache: Any, ids: Sequence[int]) -> None:
        """Append `ids` to `cache` without computing logits for them."""

    def generate(self, cache: Any, request: GenerationRequest) -> Generator[int, None, None]:
        """Prefill the prompt, then yield new tokens until a stop id (not yielded) or the budget.

        The last yielded token is never fed back, so the cache ends one token short of prompt + output."""

    def rollback(self, cache: Any, length: int) -> None:
        """Drop everything after the first `length` tokens of `cache`."""

    def score_rows(
        self,
        cache: Any,
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,
    ) -> list[RowScores]:
        """Read each row on its own (rows never see each other): a token list on top of the whole cache, a `PackedRow`
        on top of its cache prefix (its aside, if any, not computed again). Returns the log P of every row token after
        the first one computed, and of each of `next_ids` after the row's last token. The cache is left as it was.
        Relevance scoring uses it (a margin without the text, or without its segment; a classifier's first reply
        token). Rows that see less than the whole cache need a packed backend.

        With `tails` (one per row) only the log P of each row's last `tails[i]` tokens is needed: a server backend
        may then read the rest from its prefix cache and leave their values NaN."""


@runtime_checkable
class PackedBackend(Backend, Protocol):
    """A backend that decodes several rows at once over prefixes of one cache (batched margins)."""

    def generate_packed(self, cache: Any, request: PackedRequest) -> Generator[list[tuple[int, int]], None, None]:
        """Yield, per decoding step, the (row index, token) pairs of the rows still running.

        Row i attends to the first `request.rows[i].prefix_length` cache tokens and to its own tokens only, so its
        output is what `generate` would give on a cache cut at that length; rows end as `PackedRequest` says. The
        cache is back at its starting length once the iterator ends or is closed."""


@runtime_checkable
class LocalKVBackend(PackedBackend, Protocol):
    """A packed backend whose keys/values live in this process: prompts computed aside, caches forked and measured
    (the document cache)."""

    cache_namespace: str  # identifies the loaded model in document-cache keys

    def prefill_aside(self, cache: Any, prompt_ids: Sequence[int]) -> PromptAside:
        """Compute `prompt_ids` on top of `cache` (attending to all of it) and leave the cache as it was."""

    def take_aside(self, cache: Any, start: int, prompt_ids: Sequence[int]) -> PromptAside:
        """Copies of the keys/values of `prompt_ids`, already in `cache` at `start` (no logits)."""

    def aside_head(self, aside: PromptAside, n_tokens: int) -> PromptAside:
        """The first `n_tokens` of `aside`, stored on their own (no logits)."""

    def aside_nbytes(self, aside: PromptAside) -> int: ...

    def fork_cache(self, cache: Any) -> Any:
        """A cache that shares `cache`'s tensors without copying them; appending to either leaves the other intact."""

    def cache_nbytes(self, cache: Any) -> int:
        """Bytes of the storage the cache's keys/values keep alive (spare room included)."""

    def filled_nbytes(self, cache: Any) -> int:
        """Bytes of the keys/values the cache holds (what a compact copy of it takes)."""

    def compact_cache(self, cache: Any) -> Any:
        """A cache to keep (a document cache entry) holding only `cache`'s own keys/values: no spare room, and
        nothing the run goes on to write (transformers: a copy; llama.cpp: the same cells on a sequence of its own)."""

    def reserve(self, cache: Any, n_tokens: int) -> None:
        """Hint: `cache` will hold up to about `n_tokens`; room may be allocated for them at once."""


def check_rows(rows: Sequence[PackedRow], base: int) -> None:
    """Refuse packed rows a cache of `base` tokens cannot serve: an empty prompt, a prefix outside the cache, or an
    aside computed for another prefix or prompt."""
    for r in rows:
        if not r.prompt_ids:
            raise ValueError("a row needs at least one prompt token")
        if not 0 <= r.prefix_length <= base:
            raise ValueError(f"row prefix {r.prefix_length} is outside the cache (length {base})")
        a = r.aside
        if a is not None and (
            a.prefix_length != r.prefix_length or list(r.prompt_ids[: len(a.prompt_ids)]) != list(a.prompt_ids)
        ):
            raise ValueError("a row's prompt aside was computed for another prefix or prompt")


def refuse_constraints(backend: Backend, request: GenerationRequest | PackedRequest) -> None:
    """Raise where a backend without `constrained_margins` is asked for a constrained (quoted) margin."""
    constrained = request.constrained if isinstance(request, PackedRequest) else request.span is not None
    if constrained:
        raise WiMInputError(quote_refusal(backend.name))


def quote_refusal(name: str) -> str:
    """Why `margin_mode="quote"` cannot run on backend `name`, with the fix."""
    return (
        f"margin_mode='quote' decodes each margin under a constraint (it may only copy a span of its segment), "
        f"which backend {name!r} cannot apply; use margin_mode='free' here, or run the model in process "
        "(WiM.from_pretrained, WiM.from_gguf: transformers or llama.cpp), where quoted margins work."
    )


class RowDecoder(Protocol):
    """Rows decoded step by step over prefixes of one cache while the cache is read further (`open_rows`).

    `add` puts a row in (its prefix must be the whole cache as it is now); every `step` is one batch: `prefill`
    appended to the cache (the rows do not see it), the prompt tokens of rows added since, and one token per running
    row; it returns the (row index, token) pairs sampled from that batch. Rows end as in a `PackedRequest`."""

    @property
    def running(self) -> bool:
        """Some row is still decoding."""

    def add(self, row: PackedRow, logprobs: list[float] | None = None, span: SpanConstraint | None = None) -> int:
        """Start a row; its index (rows are numbered in the order they were added)."""

    def step(self, prefill: Sequence[int] = ()) -> list[tuple[int, int]]: ...

    def close(self) -> None:
        """Free the rows (the cache keeps what was prefilled)."""


@runtime_checkable
class OverlapBackend(LocalKVBackend, Protocol):
    """A backend whose margin rows decode in the same batches as the prefill of the segments after them."""

    def open_rows(
        self,
        cache: Any,
        max_new_tokens: int,
        sampling: SamplingConfig,
        done: Callable[[int, list[int]], bool] | None = None,
    ) -> RowDecoder: ...


def packed_view(backend: Backend) -> PackedBackend | None:
    """`backend` as a `PackedBackend` where it declares packed rows, else None."""
    if backend.capabilities.packed_rows and isinstance(backend, PackedBackend):
        return backend
    return None


def local_kv_view(backend: Backend) -> LocalKVBackend | None:
    """`backend` as a `LocalKVBackend` where it declares prompt asides and a local document cache, else None."""
    caps = backend.capabilities
    if caps.packed_rows and caps.kv_asides and caps.local_document_cache and isinstance(backend, LocalKVBackend):
        return backend
    return None


def overlap_view(backend: Backend) -> OverlapBackend | None:
    """`backend` as an `OverlapBackend` where it declares overlapping rows (and keeps keys/values here), else None."""
    if backend.capabilities.overlap and local_kv_view(backend) is not None and isinstance(backend, OverlapBackend):
        return backend
    return None
