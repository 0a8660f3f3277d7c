"""Regression tests of the hardening issue (#14): each input or fault once crashed deep in a library or misled."""

from __future__ import annotations

import sys
import threading

from wim_integrations.doc_cache import DocumentCache


def test_document_cache_nbytes_is_safe_while_another_thread_stores():
    cache = DocumentCache(max_bytes=5000)
    for i in range(5000):
        cache.put(f"seed{i}", object(), 1)
    errors: list[BaseException] = []
    stop = threading.Event()

    def store() -> None:
        i = 0
        while not stop.is_set():
            cache.put(f"k{i}", object(), 1)  # each put evicts the oldest entry
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a read overlaps a store
    writer = threading.Thread(target=store)
    writer.start()
    try:
        for _ in range(300):
            assert cache.nbytes == 5000
    except BaseException as exc:  # collected, so the writer is stopped before the test fails
        errors.append(exc)
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    assert cache.nbytes == len(cache) == 5000
