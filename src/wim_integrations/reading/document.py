"""A run's use of the document cache: wait for another run's prefill of the same document (single flight), start
from a stored copy, and store the document once read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.base import LocalKVBackend, PromptAside
from .doc_cache import DocumentCache, Lease, PrefilledDocument, document_key
from .plan import Plan


class CachedDocument:
    """The document of one run in a `DocumentCache`. `open()` returns the stored entry or None (then this run holds
    the lease and prefills it: others asking for it wait); `store()` keeps the read cache and lets them go on."""

    def __init__(self, kv: LocalKVBackend, doc_cache: DocumentCache, plan: Plan) -> None:
        self.kv, self.doc_cache, self.plan = kv, doc_cache, plan
        self.key = document_key(kv.cache_namespace, plan.full_ids)
        self._lease: Lease | None = None

    def open(self, cancelled: Callable[[], bool]) -> PrefilledDocument | None:
        stored: PrefilledDocument | None
        stored, self._lease = self.doc_cache.acquire(self.key, cancelled=cancelled)
        return stored

    def progress(self) -> None:
        """This run is still reading: waiting runs keep waiting rather than prefilling the document too."""
        if self._lease is not None:
            self.doc_cache.progress(self._lease)

    def release(self) -> None:
        """Let waiting runs go on (they find the document stored, or prefill it themselves)."""
        if self._lease is not None:
            lease, self._lease = self._lease, None
            self.doc_cache.release(self.key, lease)

    def store(self, cache: Any, margin_heads: dict[int, PromptAside]) -> None:
        """Keep the context as read, with the margin heads computed so far: a compact copy, so the entry holds (and
        is charged) only the document's own keys/values, not the room this run reserved for its peak (a fork would
        keep that whole buffer alive: 3x the document's bytes on a short one)."""
        heads = dict(margin_heads)
        nbytes = self.kv.filled_nbytes(cache) + sum(self.kv.aside_nbytes(h) for h in heads.values())
        if self.doc_cache.fits(nbytes):  # too large to keep: no copy made
            entry = PrefilledDocument(self.kv.compact_cache(cache), tuple(self.plan.margin_head_ids), heads)
            self.doc_cache.put(self.key, entry, nbytes)
        self.release()
