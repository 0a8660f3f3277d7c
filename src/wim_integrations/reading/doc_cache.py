"""Reuse of a document's prefilled cache across questions.

The context prefill (chat prefix, context opening, every segment) does not depend on the question, so a second
question on the same document can start from the stored cache instead of recomputing it. Entries are keyed by the
model instance and a hash of the exact prefilled tokens, so any change that alters those tokens (the document, the
prompt templates, the tokenizer, the model) is a different key. Bounded by bytes, least recently used evicted first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import WiMInputError


def document_key(namespace: str, token_ids: Sequence[int]) -> str:
    """Key of a prefilled prefix: the model instance's namespace + length + sha256 of the tokens."""
    digest = hashlib.sha256(array("q", token_ids).tobytes()).hexdigest()
    return f"{namespace}|{len(token_ids)}|{digest}"


@dataclass
class _Entry:
    cache: Any
    nbytes: int


@dataclass(eq=False)
class Lease:
    """The right to prefill one document and store it, held by the first run that misses it; runs that miss it
    meanwhile wait for it (single flight). `progress` is when its holder last made progress."""

    done: threading.Event = field(default_factory=threading.Event)
    progress: float = field(default_factory=time.monotonic)
    thread: int = field(default_factory=threading.get_ident)  # the thread that last stepped its holder
    waiting: int = 0


# How often a run waiting for another's prefill looks at its own cancellation and the holder's progress.
_POLL_SECONDS = 0.05


class DocumentCache:
    """Thread-safe LRU of prefilled context caches, bounded by `max_bytes` of key/value tensors.

    Stored caches are never mutated: readers get a fork (shared tensors, no copy) from the backend, so concurrent
    questions on one document each read the same entry safely. Concurrent first questions on one document prefill it
    once (`acquire`): the first prefills and stores it, the others wait and start from the stored entry.
    """

    def __init__(self, max_bytes: int = 512 * 1024 * 1024, *, wait_seconds: float = 60.0) -> None:
        """`wait_seconds`: how long a run waits for another run's prefill of the same document that makes no progress
        (an abandoned stream) before it prefills the document itself."""
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise WiMInputError(f"max_bytes must be a whole number of bytes >= 0 (0 keeps nothing), not {max_bytes!r}.")
        if not isinstance(wait_seconds, int | float) or isinstance(wait_seconds, bool) or not wait_seconds >= 0:
            raise WiMInputError(f"wait_seconds must be a number of seconds >= 0, not {wait_seconds!r}.")
        self.max_bytes = max_bytes
        self.wait_seconds = float(wait_seconds)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._leases: dict[str, Lease] = {}
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

    def acquire(self, key: str, cancelled: Callable[[], bool] | None = None) -> tuple[Any | None, Lease | None]:
        """Single flight: (stored cache, None) on a hit; (None, lease) on a miss, the caller then prefills and stores
        the document and must `release` the lease (stored or not); a miss while another run holds the lease waits
        for it and looks again. (None, None): no wait, or one that ended without a hit (`cancelled()` became true, the
        holder made no progress for `wait_seconds`, or the holder is a stream this same thread steps, which cannot go
        on while it waits): the caller prefills on its own."""
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return entry.cache, None
                lease = self._leases.get(key)
                if lease is None:
                    lease = self._leases[key] = Lease()
                    self.misses += 1
                    return None, lease
                if lease.thread == threading.get_ident():  # its holder is a suspended stream of this very thread
                    self.misses += 1
                    return None, None
                lease.waiting += 1
            try:
                while not lease.done.wait(_POLL_SECONDS):
                    if cancelled is not None and cancelled():
                        return None, None
                    if time.monotonic() - lease.progress > self.wait_seconds:
                        with self._lock:
                            self.misses += 1
                        return None, None
            finally:
                with self._lock:
                    lease.waiting -= 1
            # The holder stored the document (a hit next time round) or gave up (the lease is free to take).

    def progress(self, lease: Lease) -> None:
        """The lease's holder is still reading: waiters keep waiting."""
        lease.progress, lease.thread = time.monotonic(), threading.get_ident()

    def release(self, key: str, lease: Lease) -> None:
        """End `lease` (idempotent): waiters look again."""
        with self._lock:
            if self._leases.get(key) is lease:
                del self._leases[key]
        lease.done.set()

    def waiting(self, key: str) -> int:
        """How many runs wait for the prefill of `key` (for tests and diagnostics)."""
        with self._lock:
            lease = self._leases.get(key)
            return lease.waiting if lease is not None else 0

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
