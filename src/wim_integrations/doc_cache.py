"""Reuse of a document's prefilled cache across questions.

The context prefill (chat prefix, context opening, every segment) does not depend on the question, so a second
question on the same document can start from the stored cache instead of recomputing it. Entries are keyed by the
model instance and a hash of the exact prefilled tokens, so any change that alters those tokens (the document, the
prompt templates, the tokenizer, the model) is a different key. Bounded by bytes, least recently used evicted first.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def document_key(namespace: str, token_ids: Sequence[int]) -> str:
    """Key of a prefilled prefix: the model instance's namespace + length + sha256 of the tokens."""
    digest = hashlib.sha256(array("q", token_ids).tobytes()).hexdigest()
    return f"{namespace}|{len(token_ids)}|{digest}"


@dataclass
class _Entry:
    cache: Any
    nbytes: int


class DocumentCache:
    """Thread-safe LRU of prefilled context caches, bounded by `max_bytes` of key/value tensors.

    Stored caches are never mutated: readers get a fork (shared tensors, no copy) from the backend, so concurrent
    questions on one document each read the same entry safely.
    """

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._nbytes = 0  # sum of the entries' nbytes, kept with them under the lock
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.cache

    def put(self, key: str, cache: Any, nbytes: int) -> bool:
        """Store `cache` (which the caller must never mutate afterwards); False if it alone exceeds the bound."""
        with self._lock:
            if (old := self._entries.pop(key, None)) is not None:
                self._nbytes -= old.nbytes
            if not self.fits(nbytes):
                return False
            self._entries[key] = _Entry(cache, nbytes)
            self._nbytes += nbytes
            while self._nbytes > self.max_bytes:
                self._nbytes -= self._entries.popitem(last=False)[1].nbytes
            return True

    def fits(self, nbytes: int) -> bool:
        """Whether an entry of `nbytes` can be stored at all (checked before making one: a fork is not free)."""
        return nbytes <= self.max_bytes

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0


@dataclass(frozen=True)
class PrefilledDocument:
    """What a document cache entry holds: the prefilled context, and the keys/values of the margin prompt's
    question-independent head after each segment (by cache position), computed for that `margin_head_ids`."""

    cache: Any
    margin_head_ids: tuple[int, ...] = ()
    margin_heads: Mapping[int, Any] = field(default_factory=dict)
