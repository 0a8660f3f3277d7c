"""The document cache holds what it promises: a stored document keeps alive (and is charged) only its own keys/values,
not the room its first run reserved for its peak; concurrent first questions on one document prefill it once (the
others wait and start from the stored entry); a waiter whose prefilling run goes away, stalls or is cancelled moves
on. Results always equal plain recomputation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from wim_integrations import WiM, WiMConfig
from wim_integrations.reading.doc_cache import DocumentCache, document_key

DOC = " ".join(
    [
        "The quick brown fox jumps over the lazy dog. Where is Mary? Mary went to the kitchen.",
        "Question: what is the secret code? Answer: the secret code is 4417.",
        "Paris is the capital of France. Berlin is the capital of Germany. Numbers 0 1 2 3 4 5 6 7 8 9.",
    ]
    * 4
)
# A long answer budget and wide margin groups: the run reserves room far beyond the document for its peak.
CFG = WiMConfig(segment_tokens=120, margin_max_new_tokens=8, answer_max_new_tokens=256, classifier_max_new_tokens=3)
FAST = CFG.with_updates(answer_max_new_tokens=8)  # where the reserved room does not matter
Q1, Q2 = "What is the secret code?", "Where is Mary?"
WAIT_LIMIT = 60.0  # a bound on the test's own waits for a state, never reached when the code works


def _summary(r):
    return r.answer, [(m.text, m.verdict, m.classifier_output) for m in r.margins], r.segments_read


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def _kv_bytes_per_token(backend) -> int:
    """Keys + values of one token in every layer, from the model's configuration (not from any cache)."""
    c = backend.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    itemsize = next(backend.model.parameters()).element_size()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * itemsize


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_stored_document_is_charged_its_own_keys_and_values(tiny_backends, kind: str) -> None:
    tiny_backend = tiny_backends[kind]
    cached = WiM(tiny_backend, config=CFG, document_cache=DocumentCache())
    plain = WiM(tiny_backend, config=CFG, document_cache=None)
    first = cached.run(DOC, Q1)
    plan = cached.plan(DOC, Q1)
    assert plan.peak_tokens > 1.5 * len(plan.full_ids)  # the run's own room is far larger than the document
    [entry] = [e.cache for e in cached.document_cache._entries.values()]
    b = tiny_backend
    heads = sum(b.aside_nbytes(h) for h in entry.margin_heads.values())
    own = len(plan.full_ids) * _kv_bytes_per_token(b) + heads
    held = b.cache_nbytes(entry.cache) + heads  # storage the entry keeps alive
    assert cached.document_cache.nbytes == held  # charged what it holds
    assert held <= 1.25 * own, f"a stored document holds {held} bytes for {own} bytes of its own keys/values"
    # Results from the stored entry equal recomputation, first and later questions, step by step and batched.
    assert _summary(first) == _summary(plain.run(DOC, Q1))
    for q, batch in ((Q2, 8), (Q1, 1)):
        again = cached.run(DOC, q, margin_batch_size=batch)
        assert again.timings.context_cache == "hit"
        assert _summary(again) == _summary(plain.run(DOC, q, margin_batch_size=batch))
    assert cached.document_cache.nbytes == held  # a hit leaves the stored entry as it was


def test_concurrent_first_questions_prefill_the_document_once(tiny_backends, monkeypatch: pytest.MonkeyPatch) -> None:
    b, n = tiny_backends["llama"], 4
    cache = DocumentCache()
    cached = WiM(b, config=FAST, document_cache=cache)
    plan = cached.plan(DOC, Q1)
    key = document_key(b.cache_namespace, plan.full_ids)
    arrivals, lock = [0], threading.Lock()
    original = b.prefill

    def gated(kv, ids):  # the context's first prefill waits until every run has either prefilled or waits
        if list(ids) == plan.head_ids:
            with lock:
                arrivals[0] += 1
            waiting = getattr(cache, "waiting", lambda key: 0)
            _until(lambda: arrivals[0] == n or waiting(key) == n - 1, "every run to reach the document")
        return original(kv, ids)

    monkeypatch.setattr(b, "prefill", gated)
    results: list = [None] * n

    def run(i: int) -> None:
        results[i] = cached.run(DOC, Q1 if i % 2 else Q2)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_LIMIT)
    assert all(r is not None for r in results)
    assert sorted(r.timings.context_cache for r in results) == ["hit"] * (n - 1) + ["miss"]
    assert arrivals[0] == 1  # one prefill of the document
    monkeypatch.setattr(b, "prefill", original)
    plain = WiM(b, config=FAST, document_cache=None)
    expected = {q: _summary(plain.run(DOC, q)) for q in (Q1, Q2)}
    assert all(_summary(r) == expected[Q1 if i % 2 else Q2] for i, r in enumerate(results))


@pytest.mark.parametrize("how", ["closed", "stalled"])
def test_a_waiter_moves_on_when_the_prefilling_run_goes_away_or_stalls(tiny_backends, how: str) -> None:
    b = tiny_backends["llama"]
    cache = DocumentCache(wait_seconds=0.3 if how == "stalled" else 60.0)
    cached = WiM(b, config=FAST, document_cache=cache)
    key = document_key(b.cache_namespace, cached.plan(DOC, Q1).full_ids)
    holder = cached.stream(DOC, Q1)
    next(holder)  # it holds the document's lease, mid-read
    out: dict = {}
    waiter = threading.Thread(target=lambda: out.setdefault("result", cached.run(DOC, Q2)))
    waiter.start()
    if how == "closed":
        _until(lambda: cache.waiting(key) == 1, "the second run to wait")
        holder.close()  # gone before storing the document: the waiter takes over
    waiter.join(WAIT_LIMIT)
    assert not waiter.is_alive()
    result = out["result"]
    assert result.timings.context_cache == "miss"
    assert _summary(result) == _summary(WiM(b, config=FAST, document_cache=None).run(DOC, Q2))
    assert key in cache  # stored by the waiter
    holder.close()


def test_a_waiting_run_can_be_cancelled(tiny_backends) -> None:
    b = tiny_backends["llama"]
    cache = DocumentCache()
    cached = WiM(b, config=FAST, document_cache=cache)
    key = document_key(b.cache_namespace, cached.plan(DOC, Q1).full_ids)
    holder = cached.stream(DOC, Q1)
    next(holder)
    waiter = cached.stream(DOC, Q2)
    events: list = []
    thread = threading.Thread(target=lambda: events.extend(waiter))
    thread.start()
    _until(lambda: cache.waiting(key) == 1, "the second run to wait")
    waiter.cancel()
    thread.join(WAIT_LIMIT)
    assert not thread.is_alive() and events == [] and waiter.result is None
    assert cache.waiting(key) == 0
    for _ in holder:  # the holder is unaffected
        pass
    assert holder.result is not None and key in cache


def test_two_streams_on_one_document_in_one_thread_do_not_wait_for_each_other(tiny_backends) -> None:
    b = tiny_backends["llama"]
    cache = DocumentCache(wait_seconds=3600)  # were the second to wait, the guard below would fail long before
    cached = WiM(b, config=FAST, document_cache=cache)
    first, second = cached.stream(DOC, Q1), cached.stream(DOC, Q2)
    events: list = []

    def interleaved() -> None:  # one thread steps both: the first holds the lease, suspended
        next(first)
        events.extend(second)

    worker = threading.Thread(target=interleaved, daemon=True)
    worker.start()
    worker.join(WAIT_LIMIT)
    assert not worker.is_alive(), "the second stream waits for the first, which only its own thread could step"
    assert second.result is not None and second.result.timings.context_cache == "miss" and events
    for _ in first:
        pass
    assert first.result is not None
