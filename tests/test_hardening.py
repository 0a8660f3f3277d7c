"""Regression tests of the hardening issue (#14): each input or fault once crashed deep in a library or misled."""

from __future__ import annotations

import sys
import threading

import pytest

from wim_integrations import WiMInputError
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


# -- LlamaIndex: bad input reaches a clear error, not the tokenizer ---------------------------------------------------
def test_llamaindex_adapters_refuse_lone_surrogates_and_bad_budgets(tiny_wim):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage

    from wim_integrations import WiMLLM, WiMSynthesizer

    with pytest.raises(WiMInputError, match="lone surrogate"):
        WiMSynthesizer(tiny_wim).get_response("who?", ["abc \ud800 def"])
    llm = WiMLLM(tiny_wim, max_new_tokens=4)
    with pytest.raises(WiMInputError, match="prompt contains a lone surrogate"):
        llm.complete("abc \ud800 def")
    with pytest.raises(WiMInputError, match="message 0 contains a lone surrogate"):
        llm.chat([ChatMessage(role="user", content="abc \ud800")])
    with pytest.raises(WiMInputError, match="max_new_tokens must be a positive integer, not -3"):
        llm.complete("hi", max_new_tokens=-3)
    with pytest.raises(WiMInputError, match="prompt is empty and formatted=True"):
        llm.complete("", formatted=True)
