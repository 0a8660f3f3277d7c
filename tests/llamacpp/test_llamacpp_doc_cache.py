"""The llama.cpp backend's document cache: a read document saved to host memory (a sequence state), restored into a
fresh sequence for the next question, with the margin heads; results as a run that reads the document again (near-
ties aside, tests/llama_cpp_agreement.py), bytes charged as saved, and prompt asides equal to prompts computed in the
rows."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SAMPLE
from llama_cpp_agreement import assert_same_greedy_tokens, assert_same_run_inproc

from wim_integrations import DocumentCache, WiM, WiMConfig
from wim_integrations.backends.base import PackedRequest, PackedRow, local_kv_view
from wim_integrations.backends.llamacpp import SavedCache

pytestmark = pytest.mark.slow

CFG = WiMConfig(segment_tokens=200, margin_max_new_tokens=12, answer_max_new_tokens=12)
Q1, Q2 = "Who keeps the lighthouse?", "What is the code of the gate?"
ATOL = 0.3  # llama.cpp's float noise across cell placements (tests/llamacpp/test_llamacpp_backend.py)


def _packed(b, cache, rows, budget):
    out: list[list[int]] = [[] for _ in rows]
    for step in b.generate_packed(cache, PackedRequest(rows, budget)):
        for i, tok in step:
            out[i].append(tok)
    return out


def test_declares_a_local_document_cache(llamacpp_backend):
    caps = llamacpp_backend.capabilities
    assert caps.kv_asides and caps.local_document_cache and local_kv_view(llamacpp_backend) is llamacpp_backend


def test_saved_cache_restores_to_the_same_logits_and_is_charged_its_bytes(llamacpp_backend):
    b = llamacpp_backend
    ids = b.encode_text(SAMPLE * 2)[:500]
    cache = b.new_cache()
    b.prefill(cache, ids)
    saved = b.compact_cache(cache)
    assert isinstance(saved, SavedCache) and b.cache_length(saved) == 500
    assert b.filled_nbytes(cache) == b.filled_nbytes(saved) == saved.nbytes > 500 * 1000  # keys+values, 30 layers
    half = b.new_cache()
    b.prefill(half, ids[:250])
    assert b.filled_nbytes(half) < saved.nbytes * 0.6
    del cache  # the live sequence is gone; the saved state stands alone
    restored = b.fork_cache(saved)
    fresh = b.new_cache()
    b.prefill(fresh, ids)
    probe = b.encode_text(" The keeper of the lighthouse is")
    [x], [y] = b.score_rows(restored, [probe], next_ids=range(20)), b.score_rows(fresh, [probe], next_ids=range(20))
    np.testing.assert_allclose(x.token_logprobs, y.token_logprobs, atol=ATOL)
    # a fork of a live cache shares its cells and goes its own way
    fork = b.fork_cache(fresh)
    b.rollback(fork, 100)
    assert b.cache_length(fresh) == 500 and b.cache_length(fork) == 100


def test_rows_with_asides_equal_rows_computed_in_the_batch(llamacpp_backend):
    """The engine's path: each margin prompt computed right after its segment, packed in later; heads saved to host
    memory and continued."""
    b = llamacpp_backend
    ids = b.encode_text(SAMPLE * 2)[:450]
    prompt = b.encode_text("\n\nWho keeps the lighthouse? Note:") + b.encode_template(b.chat_frame().suffix)
    cuts = [150, 300, 450]
    cache = b.new_cache()
    asides, heads = [], []
    for start, end in zip([0, *cuts[:-1]], cuts, strict=True):
        b.prefill(cache, ids[start:end])
        asides.append(b.prefill_aside(cache, prompt))
        heads.append(b.aside_head(asides[-1], 5))
        assert b.cache_length(cache) == end  # taken out again
    with_asides = _packed(b, cache, [PackedRow(c, prompt, a) for c, a in zip(cuts, asides, strict=True)], 10)
    with_heads = _packed(b, cache, [PackedRow(c, prompt, h) for c, h in zip(cuts, heads, strict=True)], 10)
    computed = _packed(b, cache, [PackedRow(c, prompt) for c in cuts], 10)
    for c, x, y, z in zip(cuts, with_asides, with_heads, computed, strict=True):
        assert_same_greedy_tokens(b, ids[:c] + prompt, x, z)
        assert_same_greedy_tokens(b, ids[:c] + prompt, y, z)
    assert b.aside_nbytes(heads[0]) < b.aside_nbytes(asides[0])
    with pytest.raises(ValueError, match="all aside but its last logits"):
        _packed(b, cache, [PackedRow(150, prompt[:5], heads[0])], 4)


def test_a_second_question_reads_the_document_from_the_cache(llamacpp_backend):
    b = llamacpp_backend
    plain = WiM(b, config=CFG, document_cache=None)
    cached = WiM(b, config=CFG, document_cache=DocumentCache())
    first = cached.run(SAMPLE, Q1)
    assert first.timings.context_cache == "miss" and len(cached.document_cache) == 1
    for q, batch in ((Q2, 1), (Q1, 4)):
        again = cached.run(SAMPLE, q, margin_batch_size=batch)
        assert again.timings.context_cache == "hit"
        assert again.tokens.prompt < first.tokens.prompt  # the document was not prefilled again
        assert_same_run_inproc(b, cached, cached.plan(SAMPLE, q), again, plain.run(SAMPLE, q))
    # the entry holds host memory only: its bytes are the saved states'
    [entry] = [e.cache for e in cached.document_cache._entries.values()]
    assert cached.document_cache.nbytes == entry.cache.nbytes + sum(
        b.aside_nbytes(h) for h in entry.margin_heads.values()
    )


def test_a_bounded_document_cache_evicts(llamacpp_backend):
    b = llamacpp_backend
    probe = WiM(b, config=CFG, document_cache=DocumentCache())
    probe.run(SAMPLE, Q1)
    one = probe.document_cache.nbytes
    lru = WiM(b, config=CFG, document_cache=DocumentCache(max_bytes=int(one * 1.5)))
    other = SAMPLE.replace("Ines", "Maren")
    lru.run(SAMPLE, Q1)
    lru.run(other, Q1)
    assert len(lru.document_cache) == 1
    assert lru.run(other, Q2).timings.context_cache == "hit"
    assert lru.run(SAMPLE, Q2).timings.context_cache == "miss"
