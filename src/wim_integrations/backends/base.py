"""The backend protocol: prefill into a cache, remember its length, generate from it, roll it back."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..config import SamplingConfig


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


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
