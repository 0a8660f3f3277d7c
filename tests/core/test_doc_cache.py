"""Reusing a document's prefilled cache: identical results, invalidation, bounded memory, concurrency."""

from __future__ import annotations

import threading

import pytest

from wim_integrations import WiM, WiMConfig
from wim_integrations.events import MarginWritten
from wim_integrations.prompts import PromptSet
from wim_integrations.reading.doc_cache import DocumentCache, document_key

DOC = " ".join(
    [
        "The quick brown fox jumps over the lazy dog. Where is Mary? Mary went to the kitchen.",
        "Question: what is the secret code? Answer: the secret code is 4417.",
        "Paris is the capital of France. Berlin is the capital of Germany. Numbers 0 1 2 3 4 5 6 7 8 9.",
    ]
    * 4
)
CFG = WiMConfig(segment_tokens=120, margin_max_new_tokens=8, answer_max_new_tokens=8, classifier_max_new_tokens=3)
Q1, Q2 = "What is the secret code?", "Where is Mary?"


def _summary(r):
    return r.answer, [(m.text, m.verdict, m.classifier_output) for m in r.margins], r.segments_read


@pytest.fixture
def plain(tiny_backends):
    return WiM(tiny_backends["llama"], config=CFG)


def test_second_question_reuses_cache_with_identical_results(tiny_backend):
    plain = WiM(tiny_backend, config=CFG)
    cached = WiM(tiny_backend, config=CFG, document_cache=DocumentCache())
    first = cached.run(DOC, Q1)
    assert first.timings.context_cache == "miss" and len(cached.document_cache) == 1
    for q in (Q2, Q1):
        again = cached.run(DOC, q)
        assert again.timings.context_cache == "hit"
        assert again.tokens.prompt < first.tokens.prompt  # the context prefix was not prefilled again
        assert _summary(again) == _summary(plain.run(DOC, q))
    # Batched margins on a hit, too.
    assert _summary(cached.run(DOC, Q2, margin_batch_size=4)) == _summary(plain.run(DOC, Q2))
    assert _summary(first) == _summary(plain.run(DOC, Q1))


@pytest.mark.parametrize("first_batch", [1, 4])
def test_margin_heads_are_stored_and_reused_with_identical_results(tiny_backend, first_batch):
    """The first read (step by step or batched) keeps each segment's margin-prompt head; later questions compute
    only the rest."""
    plain = WiM(tiny_backend, config=CFG)
    cached = WiM(tiny_backend, config=CFG.with_updates(margin_batch_size=first_batch), document_cache=DocumentCache())
    first = cached.run(DOC, Q1)
    [entry] = [e.cache for e in cached.document_cache._entries.values()]
    plan = cached.plan(DOC, Q2)
    assert 0 < plan.margin_head_length < len(plan.margin_prompt_ids)
    assert entry.margin_head_ids == tuple(plan.margin_head_ids)  # question-independent
    assert sorted(entry.margin_heads) == plan.segment_ends
    b = tiny_backend
    assert cached.document_cache.nbytes == b.cache_nbytes(entry.cache) + sum(
        b.aside_nbytes(h) for h in entry.margin_heads.values()
    )
    calls: list[int] = []
    original = b.prefill_aside
    b.prefill_aside = lambda cache, ids: (calls.append(len(ids)), original(cache, ids))[1]
    try:
        second = cached.run(DOC, Q2)
    finally:
        del b.prefill_aside
    assert second.timings.context_cache == "hit" and calls == []  # nothing recomputed per segment
    assert _summary(second) == _summary(plain.run(DOC, Q2))
    assert _summary(first) == _summary(plain.run(DOC, Q1))
    # Another margin instruction (inline mode) cannot use the stored heads: recomputed, still identical.
    inline = cached.run(DOC, Q2, classification="inline")
    assert inline.timings.context_cache == "hit"
    assert _summary(inline) == _summary(plain.run(DOC, Q2, classification="inline"))


def test_cache_invalidated_by_anything_that_changes_the_context(tiny_backends):
    shared = DocumentCache()
    wim = WiM(tiny_backends["llama"], config=CFG, document_cache=shared)
    assert wim.run(DOC, Q1).timings.context_cache == "miss"
    assert wim.run(DOC + " Extra.", Q1).timings.context_cache == "miss"  # other tokens
    # Another segmentation of the same tokens would be a hit; a different prompt opening is not.
    opening = PromptSet.default().with_overrides(context_opening="Here is a document:\n")
    other_prompts = WiM(tiny_backends["llama"], config=CFG, prompts=opening, document_cache=shared)
    assert other_prompts.run(DOC, Q1).timings.context_cache == "miss"
    other_model = WiM(tiny_backends["qwen2"], config=CFG, document_cache=shared)
    assert other_model.run(DOC, Q1).timings.context_cache == "miss"  # same tokenizer, other model
    assert wim.run(DOC, Q2).timings.context_cache == "hit"
    assert wim.run(DOC, Q2, reuse_document_cache=False).timings.context_cache == "off"
    assert len(shared) == 4


def test_answer_now_on_a_hit_answers_from_the_segments_read(tiny_backends):
    def answer_after_first(wim):
        stream = wim.stream(DOC, Q1, margin_batch_size=1)
        for e in stream:
            if isinstance(e, MarginWritten):
                stream.answer_now()
        return stream.result

    cached = WiM(tiny_backends["qwen2"], config=CFG, document_cache=DocumentCache())
    cached.run(DOC, Q2)
    hit = answer_after_first(cached)
    assert hit.timings.context_cache == "hit" and hit.segments_read == 1
    assert _summary(hit) == _summary(answer_after_first(WiM(tiny_backends["qwen2"], config=CFG)))


def test_memory_bound_and_lru(tiny_backends):
    b = tiny_backends["llama"]
    probe = WiM(b, config=CFG, document_cache=DocumentCache())
    probe.run(DOC, Q1)
    one = probe.document_cache.nbytes
    assert one > 0
    lru = WiM(b, config=CFG, document_cache=DocumentCache(max_bytes=int(one * 1.5)))
    doc_b = DOC.replace("Mary", "John")
    lru.run(DOC, Q1)
    lru.run(doc_b, Q1)  # evicts DOC
    assert len(lru.document_cache) == 1 and lru.document_cache.nbytes <= lru.document_cache.max_bytes
    assert lru.run(doc_b, Q2).timings.context_cache == "hit"
    assert lru.run(DOC, Q2).timings.context_cache == "miss"
    tiny = WiM(b, config=CFG, document_cache=DocumentCache(max_bytes=one - 1))
    tiny.run(DOC, Q1)
    assert len(tiny.document_cache) == 0 and tiny.run(DOC, Q1).timings.context_cache == "miss"


@pytest.mark.parametrize("first_batch", [1, 3])  # the stored margin heads are shared by all questions
def test_concurrent_questions_on_one_document(tiny_backends, first_batch):
    b = tiny_backends["phi3"]
    plain = WiM(b, config=CFG)
    want = {q: _summary(plain.run(DOC, q)) for q in (Q1, Q2)}
    cached = WiM(b, config=CFG, document_cache=DocumentCache())
    cached.run(DOC, Q1, margin_batch_size=first_batch)
    [entry] = [e.cache for e in cached.document_cache._entries.values()]
    assert len(entry.margin_heads) == cached.plan(DOC, Q1).n_segments
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = cached.run(DOC, (Q1, Q2)[i % 2], margin_batch_size=1 + i % 3)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in results.items():
        assert r.timings.context_cache == "hit"
        assert _summary(r) == want[(Q1, Q2)[i % 2]]
    assert len(results) == 6


def test_document_key_and_cache_unit():
    assert document_key("m", [1, 2, 3]) != document_key("m", [1, 2, 4])
    assert document_key("m", [1, 2, 3]) != document_key("n", [1, 2, 3])
    c = DocumentCache(max_bytes=10)
    assert c.put("a", object(), 5) and c.put("b", object(), 4)
    assert c.get("a") is not None  # a is now most recent
    c.put("c", object(), 5)
    assert "b" not in c and "a" in c and "c" in c
    assert not c.put("big", object(), 11)
    assert (c.hits, c.misses) == (1, 0)
    with pytest.raises(ValueError, match="max_bytes"):
        DocumentCache(max_bytes=-1)


def test_margin_heads_are_only_kept_for_a_document_cache(tiny_backends, monkeypatch):
    b = tiny_backends["qwen2"]
    kept: list[int] = []
    original = b.aside_head
    head = WiM(b, config=CFG).plan(DOC, Q1).margin_head_length
    # Only cuts of the head's length count (segment_pmi scoring cuts prompts too, for its own use, not to store).
    monkeypatch.setattr(b, "aside_head", lambda aside, n: (n == head and kept.append(n), original(aside, n))[1])
    WiM(b, config=CFG.with_updates(margin_batch_size=4), document_cache=None).run(DOC, Q1)
    assert kept == []  # no cache to store them in: no copies
    cached = WiM(b, config=CFG.with_updates(margin_batch_size=4), document_cache=DocumentCache())
    assert cached.run(DOC, Q1).n_segments == len(kept) > 0


def test_a_document_cache_is_on_by_default_and_can_be_turned_off(tiny_backends):
    from fake_backend import FakeBackend

    wim = WiM(tiny_backends["llama"], config=CFG)
    assert isinstance(wim.document_cache, DocumentCache) and wim.document_cache.max_bytes == 512 * 1024 * 1024
    assert [wim.run(DOC, q).timings.context_cache for q in (Q1, Q2)] == ["miss", "hit"]
    assert wim.with_options().document_cache is wim.document_cache  # kept
    fresh = wim.with_options(document_cache="auto").document_cache
    assert isinstance(fresh, DocumentCache) and fresh is not wim.document_cache and len(fresh) == 0
    off = wim.with_options(document_cache=None)
    assert off.document_cache is None and off.run(DOC, Q1).timings.context_cache == "off"
    assert WiM(FakeBackend(), config=CFG).document_cache is None  # keys/values not held here: nothing to cache


def test_tokens_read_from_the_cache_are_counted_apart(tiny_backends):
    """A hit reads the chat head, the context and every stored margin-prompt head from the cache: `cache_read`; the
    whole prompt (`input_total`) is the same as on the miss."""
    cached = WiM(tiny_backends["llama"], config=CFG, document_cache=DocumentCache())
    first, again = cached.run(DOC, Q1), cached.run(DOC, Q1)
    t1, t2 = first.tokens, again.tokens
    assert t1.cache_read == 0 and t1.input_total == t1.context + t1.prompt + t1.answer_prompt
    plan = cached.plan(DOC, Q1)
    assert t2.cache_read == len(plan.head_ids) + plan.context.n_tokens + plan.n_segments * plan.margin_head_length
    assert t2.input_total == t1.input_total == t2.prompt + t2.answer_prompt + t2.cache_read
