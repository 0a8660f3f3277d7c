"""Packed generation over one shared cache equals plain generation on a cache cut at each row's prefix."""

from __future__ import annotations

import pytest
import torch

from wim_integrations.backends.base import GenerationRequest, PackedRequest, PackedRow
from wim_integrations.config import SamplingConfig

TEXT = (
    "A long document is split into segments. After each segment the model writes a margin note. "
    "The quick brown fox jumps over the lazy dog. Where is Mary? Mary went to the kitchen. "
    "Paris is the capital of France. Berlin is the capital of Germany. Numbers 0 1 2 3 4 5 6 7 8 9."
)


def _reference(backend, context_ids, prefix, prompt, budget, sampling=None):
    cache = backend.new_cache()
    backend.prefill(cache, context_ids[:prefix])
    req = GenerationRequest(prompt, budget, sampling or SamplingConfig())
    return list(backend.generate(cache, req))


def _prefilled(backend):
    """The test text's ids and a cache holding them."""
    ids = backend.encode_text(TEXT)
    cache = backend.new_cache()
    backend.prefill(cache, ids)
    return ids, cache


def _packed(backend, cache, rows, budget, sampling=None):
    out: list[list[int]] = [[] for _ in rows]
    for step in backend.generate_packed(cache, PackedRequest(rows, budget, sampling or SamplingConfig())):
        for i, tok in step:
            out[i].append(tok)
    return out


def test_packed_rows_equal_sequential_generate(tiny_backend):
    b = tiny_backend
    ids = b.encode_text(TEXT)
    prompt = b.encode_text("Question: what is the secret code?") + b.encode_template(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    cuts = [len(ids) // 4, len(ids) // 2, 3 * len(ids) // 4, len(ids)]
    cache = b.new_cache()
    b.prefill(cache, ids)
    budget = 12
    # Rows with different prompts too, so rows differ in length.
    rows = [PackedRow(c, prompt[k % 3 :]) for k, c in enumerate(cuts)]
    got = _packed(b, cache, rows, budget)
    want = [_reference(b, ids, r.prefix_length, list(r.prompt_ids), budget) for r in rows]
    assert got == want
    assert any(len(g) > 0 for g in got)
    # The shared cache is back where it started and still holds exactly the context.
    assert b.cache_length(cache) == len(ids)
    fresh = b.new_cache()
    b.prefill(fresh, ids)
    for la, lb in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(la.keys, lb.keys)
        torch.testing.assert_close(la.values, lb.values)


def test_rows_with_prompts_computed_aside_equal_rows_computed_packed(tiny_backend):
    """The engine's path: each margin prompt computed right after its segment (cache cut there), packed later."""
    b = tiny_backend
    ids = b.encode_text(TEXT)
    prompt = b.encode_text("Question: what is the secret code?") + b.encode_template("<|im_end|>\n")
    cuts = [len(ids) // 3, 2 * len(ids) // 3, len(ids)]
    cache = b.new_cache()
    asides = []
    for start, end in zip([0, *cuts[:-1]], cuts, strict=True):
        b.prefill(cache, ids[start:end])
        asides.append(b.prefill_aside(cache, prompt))
        assert b.cache_length(cache) == end  # taken out again
    got = _packed(b, cache, [PackedRow(c, prompt, a) for c, a in zip(cuts, asides, strict=True)], 10)
    assert got == _packed(b, cache, [PackedRow(c, prompt) for c in cuts], 10)
    assert got == [_reference(b, ids, c, prompt, 10) for c in cuts]
    assert b.cache_length(cache) == len(ids)
    with pytest.raises(ValueError, match="another prefix"):
        list(b.generate_packed(cache, PackedRequest([PackedRow(cuts[1], prompt, asides[0])], 2)))
    # Mixed rows: a whole prompt aside, only its head aside (the rest computed in the packed pass), none at all.
    head = b.aside_head(asides[1], 4)
    assert head.last_logits is None and list(head.prompt_ids) == prompt[:4]
    mixed = [PackedRow(cuts[0], prompt, asides[0]), PackedRow(cuts[1], prompt, head), PackedRow(cuts[2], prompt)]
    assert _packed(b, cache, mixed, 10) == got
    with pytest.raises(ValueError, match="last logits"):
        list(b.generate_packed(cache, PackedRequest([PackedRow(cuts[1], prompt[:4], head)], 2)))
    assert b.cache_length(cache) == len(ids)


def test_packed_rows_end_when_done_says_so(tiny_backends):
    b = tiny_backends["llama"]
    ids, cache = _prefilled(b)
    rows = [PackedRow(len(ids) // 2, ids[:5]), PackedRow(len(ids), ids[:5])]
    full = _packed(b, cache, rows, 8)
    assert all(len(f) >= 4 for f in full)
    out: list[list[int]] = [[], []]
    steps = b.generate_packed(cache, PackedRequest(rows, 8, done=lambda i, toks: i == 0 and len(toks) == 2))
    for step in steps:
        for i, tok in step:
            out[i].append(tok)
    assert out == [full[0][:2], full[1]]


def test_packed_rows_stop_at_first_stop_token(tiny_backends):
    b = tiny_backends["llama"]
    ids = b.encode_text(TEXT)
    prompt = b.encode_text("Where is Mary?")
    cache = b.new_cache()
    b.prefill(cache, ids)
    # Force a stop on row 1 by making its reference output's first token a stop id: use a backend copy whose
    # stop set contains the token row 1 would produce first.
    first = _reference(b, ids, 20, prompt, 3)
    assert first, "tiny model produced no token; pick another prompt"
    original = b.stop_ids
    try:
        b.stop_ids = frozenset(original | {first[0]})
        got = _packed(b, cache, [PackedRow(len(ids), prompt), PackedRow(20, prompt)], 6)
        want0 = _reference(b, ids, len(ids), prompt, 6)
    finally:
        b.stop_ids = original
    assert got[1] == []
    assert got[0] == want0


def test_packed_seeded_sampling_matches_per_row_generate(tiny_backends):
    b = tiny_backends["qwen2"]
    ids = b.encode_text(TEXT)
    prompt = b.encode_text("Where is Mary?")
    sampling = SamplingConfig(do_sample=True, temperature=1.5, seed=7)
    cache = b.new_cache()
    b.prefill(cache, ids)
    rows = [PackedRow(10, prompt), PackedRow(len(ids), prompt)]
    got = _packed(b, cache, rows, 8, sampling)
    assert got == [_reference(b, ids, r.prefix_length, prompt, 8, sampling) for r in rows]


def test_packed_closing_early_restores_cache(tiny_backends):
    b = tiny_backends["phi3"]
    ids = b.encode_text(TEXT)
    cache = b.new_cache()
    b.prefill(cache, ids)
    it = b.generate_packed(cache, PackedRequest([PackedRow(5, ids[:4]), PackedRow(9, ids[:6])], 8))
    next(it)
    assert b.cache_length(cache) > len(ids)
    it.close()
    assert b.cache_length(cache) == len(ids)


def test_packed_rejects_bad_rows(tiny_backends):
    b = tiny_backends["llama"]
    cache = b.new_cache()
    b.prefill(cache, [5, 6, 7])
    with pytest.raises(ValueError, match="outside the cache"):
        list(b.generate_packed(cache, PackedRequest([PackedRow(4, [1])], 2)))
    with pytest.raises(ValueError, match="at least one prompt token"):
        list(b.generate_packed(cache, PackedRequest([PackedRow(1, [])], 2)))


def test_fork_shares_tensors_and_stays_intact(tiny_backends):
    b = tiny_backends["llama"]
    ids = b.encode_text(TEXT)
    cache = b.new_cache()
    b.prefill(cache, ids)
    fork = b.fork_cache(cache)
    assert fork.layers[0].keys.data_ptr() == cache.layers[0].keys.data_ptr()  # no copy
    assert b.cache_nbytes(fork) == b.cache_nbytes(cache)  # the same storage
    snapshot = [layer.keys.clone() for layer in cache.layers]
    list(b.generate(fork, GenerationRequest(ids[:5], 4)))
    b.rollback(fork, 3)
    assert b.cache_length(cache) == len(ids)
    for layer, keys in zip(cache.layers, snapshot, strict=True):
        assert torch.equal(layer.keys, keys)
    # ...and the other way round: writing to the original (which had room to spare) leaves the fork alone.
    fork_snapshot = [layer.keys.clone() for layer in fork.layers]
    b.prefill(cache, ids[:7])
    for layer, keys in zip(fork.layers, fork_snapshot, strict=True):
        assert torch.equal(layer.keys, keys)
    logical = sum(2 * t.numel() * t.element_size() for t in snapshot)
    assert logical < b.cache_nbytes(cache) <= 3 * logical  # filled part plus spare room, all counted


def test_asides_appended_into_spare_room_of_the_cache(tiny_backends):
    """Appending asides writes into the cache's own buffer (created under inference mode) when it has room."""
    b = tiny_backends["qwen2"]
    ids, cache = _prefilled(b)
    prompt = b.encode_text("Where is Mary?")
    asides = [b.prefill_aside(cache, prompt), b.prefill_aside(cache, prompt[:-1])]
    layer = cache.layers[0]
    assert layer._key_buffer.shape[-2] - len(ids) >= 2 * len(prompt)  # fits: written in place, no reallocation
    rows = [PackedRow(len(ids), prompt, asides[0]), PackedRow(len(ids), prompt[:-1], asides[1])]
    got = _packed(b, cache, rows, 5)
    assert got == [_reference(b, ids, len(ids), p, 5) for p in (prompt, prompt[:-1])]


def test_take_aside_copies_what_the_cache_holds(tiny_backends):
    b = tiny_backends["llama"]
    ids, cache = _prefilled(b)
    prompt = b.encode_text("Where is Mary?")
    computed = b.prefill_aside(cache, prompt)
    b.prefill(cache, prompt)  # the same prompt, now left in the cache
    taken = b.take_aside(cache, len(ids), prompt)
    assert taken.last_logits is None and taken.prefix_length == len(ids)
    for (k1, v1), (k2, v2) in zip(taken.kv, computed.kv, strict=True):
        torch.testing.assert_close(k1, k2)
        torch.testing.assert_close(v1, v2)
    b.rollback(cache, len(ids))  # the copies do not change when the cache's buffer is written again
    b.prefill(cache, ids[: len(prompt)])
    assert not torch.equal(cache.layers[0].keys[..., len(ids) :, :], taken.kv[0][0])
    torch.testing.assert_close(taken.kv[0][0], computed.kv[0][0])
    with pytest.raises(ValueError, match="not the"):
        b.take_aside(cache, len(ids) + 1, prompt)
