"""The llama.cpp backend's document cache: a read document kept in its KV cells on a sequence of its own (forked
by cell membership for the next question), spilled to host memory when a decode needs its cells and loaded again by
the next fork; results as a run that reads the document again (near-ties aside, tests/llama_cpp_agreement.py), bytes
charged as a saved copy, and prompt asides equal to prompts computed in the rows."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SAMPLE
from llama_cpp_agreement import assert_same_greedy_tokens, assert_same_run_inproc

from wim_integrations import DocumentCache, WiM, WiMConfig
from wim_integrations.backends.base import PackedRequest, PackedRow, local_kv_view
from wim_integrations.backends.llamacpp import KeptCache

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


def _probe_scores(b, cache, probe):
    [x] = b.score_rows(cache, [probe], next_ids=range(20))
    return x.token_logprobs + list(x.next_logprobs.values())


def test_kept_cache_shares_cells_and_is_charged_a_saved_copy(llamacpp_backend):
    b = llamacpp_backend
    ids = b.encode_text(SAMPLE * 2)[:500]
    cache = b.new_cache()
    b.prefill(cache, ids)
    kept = b.compact_cache(cache)
    assert isinstance(kept, KeptCache) and not kept.spilled and b.cache_length(kept) == 500
    assert b.filled_nbytes(cache) == b.filled_nbytes(kept) > 500 * 1000  # keys+values, 30 layers
    half = b.new_cache()
    b.prefill(half, ids[:250])
    assert b.filled_nbytes(half) < b.filled_nbytes(kept) * 0.6
    del cache  # the run's sequence is gone; the kept one still holds the cells
    restored = b.fork_cache(kept)
    fresh = b.new_cache()
    b.prefill(fresh, ids)
    probe = b.encode_text(" The keeper of the lighthouse is")
    np.testing.assert_allclose(_probe_scores(b, restored, probe), _probe_scores(b, fresh, probe), atol=ATOL)
    # a fork of a live cache shares its cells and goes its own way
    fork = b.fork_cache(fresh)
    b.rollback(fork, 100)
    assert b.cache_length(fresh) == 500 and b.cache_length(fork) == 100


def test_a_kept_document_is_spilled_when_cells_run_out_and_loaded_again(llamacpp_backend):  # its skip rule
    """A context of 1,536 cells keeps a 500-token document; a 1,000-token read fits beside it, and a second read of
    100 tokens then needs its cells: the document is saved to host memory and its cells freed (the read succeeds),
    and the next fork loads it back, scoring as a fresh read does."""
    from wim_integrations.llamacpp_models import load_gguf_backend
    from wim_integrations.models import default_gguf_path

    b = load_gguf_backend(default_gguf_path(), n_ctx=1024, n_threads=2)
    try:
        ids = b.encode_text(SAMPLE * 8)
        assert len(ids) >= 1000 and b.n_cells == 1536
        cache = b.new_cache()
        b.prefill(cache, ids[:500])
        kept = b.compact_cache(cache)
        charged = b.filled_nbytes(kept)
        del cache
        big = b.new_cache()
        b.prefill(big, ids[:1000])  # 500 kept + 1,000: nothing spilled
        assert not kept.spilled
        small = b.new_cache()
        b.prefill(small, ids[:100])  # 1,600 cells asked for: the kept document makes room
        assert kept.spilled and b.filled_nbytes(kept) == charged and b.cache_length(kept) == 500
        del big, small
        restored = b.fork_cache(kept)
        assert not kept.spilled  # loaded back into its cells: the next fork shares them again
        fresh = b.new_cache()
        b.prefill(fresh, ids[:500])
        probe = b.encode_text(" The keeper of the lighthouse is")
        np.testing.assert_allclose(_probe_scores(b, restored, probe), _probe_scores(b, fresh, probe), atol=ATOL)
    finally:
        b.close()


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
    # the entry is charged what its saved copy would take: the document's keys/values and the margin heads
    [entry] = [e.cache for e in cached.document_cache._entries.values()]
    assert cached.document_cache.nbytes == b.filled_nbytes(entry.cache) + sum(
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
