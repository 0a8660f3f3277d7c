"""`BufferedLayer` must hold exactly what transformers' `DynamicLayer` holds, write in place, and never write into
a buffer a fork can see; `wim_sdpa` must compute what transformers' `sdpa` computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicLayer

from wim_integrations.backends.attention import wim_sdpa
from wim_integrations.backends.kv_buffer import BufferedLayer

OPS = st.lists(
    st.tuples(
        st.sampled_from(["append", "crop", "fork", "drop"]),
        st.integers(0, 7),  # which live layer (modulo their number)
        st.integers(1, 90),
    ),
    max_size=40,
)


def _kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_buffered_layers_and_their_forks_each_match_a_dynamic_layer(ops):
    """Any mix of appends, crops, forks and dropped forks, on any of the forks: every layer holds exactly what a
    `DynamicLayer` given the same operations holds, so no fork ever writes what another can see."""
    live: list[tuple[BufferedLayer, DynamicLayer]] = [(BufferedLayer(), DynamicLayer())]
    for step, (op, which, n) in enumerate(ops):
        layer, reference = live[which % len(live)]
        if op == "append":
            k, v = _kv(n, step)
            got, want = layer.update(k, v), reference.update(k, v)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        elif op == "crop" and layer.is_initialized:
            n = min(n % 40, layer.get_seq_length())
            layer.crop(-n)
            reference.crop(-n)
        elif op == "fork" and layer.is_initialized:
            twin_ref = DynamicLayer()
            twin_ref.update(reference.keys.clone(), reference.values.clone())
            live.append((layer.fork(), twin_ref))
        elif op == "drop" and len(live) > 1:  # a dead writer frees the room past what the others see
            live.pop(which % len(live))
        for lay, ref in live:
            assert lay.get_seq_length() == ref.get_seq_length()
            if ref.get_seq_length():
                assert torch.equal(lay.keys, ref.keys) and torch.equal(lay.values, ref.values)


def test_appends_within_the_spare_room_write_in_place():
    layer = BufferedLayer()
    layer.update(*_kv(300, 0))
    storage = layer.keys.untyped_storage().data_ptr()
    for step in range(20):  # decode steps: no reallocation, no copy of what is already cached
        layer.update(*_kv(1, step + 1))
        assert layer.keys.untyped_storage().data_ptr() == storage
    assert layer.get_seq_length() == 320
    stored = layer.fork()  # e.g. a document cache entry
    kept = stored.keys.clone()
    layer.update(*_kv(1, 99))  # past what the fork sees: appended in place, no copy of the 320 tokens
    assert layer.keys.untyped_storage().data_ptr() == storage and torch.equal(stored.keys, kept)
    reader = stored.fork()  # another reader of the entry while `layer` appends: it copies
    reader.update(*_kv(1, 100))
    assert reader.keys.untyped_storage().data_ptr() != storage
    layer.crop(-5)
    layer.update(*_kv(1, 101))  # below what the forks see: copies
    assert layer.keys.untyped_storage().data_ptr() != storage
    del layer, reader  # the appending layers are gone: the next reader appends in place again
    again = stored.fork()
    again.update(*_kv(2, 102))
    assert again.keys.untyped_storage().data_ptr() == storage and torch.equal(stored.keys, kept)


def test_a_reserved_layer_allocates_once():
    layer = BufferedLayer()
    layer.reserve(500)
    layer.update(*_kv(100, 0))
    storage = layer.keys.untyped_storage().data_ptr()
    for step in range(20):
        layer.update(*_kv(20, step + 1))  # up to 500 tokens: written in place, never copied
    assert layer.get_seq_length() == 500 and layer.keys.untyped_storage().data_ptr() == storage


def test_a_wim_run_never_copies_its_cache_to_grow(tiny_backends, monkeypatch):
    """The plan's peak is reserved at the start: reading segment after segment, the margins and the answer all fit in
    the first allocation (a growth copies the whole cache, and the moment with both copies is the memory peak)."""
    from helpers import SAMPLE

    from wim_integrations import WiM, WiMConfig

    copies: list[int] = []
    original = BufferedLayer._grow
    monkeypatch.setattr(
        BufferedLayer, "_grow", lambda self, k, v, n, need: (copies.append(n), original(self, k, v, n, need))[1]
    )
    cfg = WiMConfig(segment_tokens=150, margin_max_new_tokens=8, answer_max_new_tokens=8, margin_stop="eos")
    wim = WiM(tiny_backends["qwen2"], config=cfg)
    for batch in (1, 4):
        wim.run(SAMPLE, "Who keeps the lighthouse?", margin_batch_size=batch, reuse_document_cache=False)
        assert copies and not [n for n in copies if n > 0], copies  # allocations only, from empty
        copies.clear()


def test_backend_caches_use_buffered_layers(tiny_backends):
    for backend in tiny_backends.values():
        cache = backend.new_cache()
        assert all(type(layer) is BufferedLayer for layer in cache.layers)


def test_wim_sdpa_only_during_packed_forwards_and_the_model_is_left_as_given(tiny_backends):
    """A model shared with another pipeline keeps its attention: `wim_sdpa` is switched on for WiM's packed calls."""
    from helpers import SAMPLE

    from wim_integrations import WiM, WiMConfig

    backend = tiny_backends["llama"]
    assert backend.model.config._attn_implementation == "sdpa"  # building the backend changed nothing
    seen: list[str] = []
    hook = backend.model.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    try:
        cfg = WiMConfig(segment_tokens=150, margin_max_new_tokens=4, answer_max_new_tokens=4, margin_batch_size=4)
        WiM(backend, config=cfg).run(SAMPLE, "Who keeps the lighthouse?")
    finally:
        hook.remove()
    assert "wim_sdpa" in seen and "sdpa" in seen  # packed steps, then plain prefill/decode
    assert backend.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", ["llama", "qwen2", "phi3"])
def test_wim_sdpa_equals_sdpa_under_a_packed_mask(tiny_model_dirs, tiny_backends, name):
    """A packed step (several queries, a 4D mask, grouped-query heads) with both implementations."""
    backend = tiny_backends[name]
    assert backend.model.config.num_key_value_heads < backend.model.config.num_attention_heads  # GQA is exercised
    stock = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[name], attn_implementation="sdpa").eval()
    ids = list(range(5, 85))
    n_q, base = 6, 80
    sees_prefix = torch.arange(base)[None, :] < torch.tensor([20, 20, 50, 50, 80, 80])[:, None]
    allowed = torch.cat([sees_prefix, torch.eye(n_q, dtype=torch.bool)], dim=1)
    allowed[1, base] = allowed[3, base + 2] = allowed[5, base + 4] = True  # each second query also sees its first
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[None, None]
    # Pass the cache under the name the installed transformers takes, as the backend does (`past_key_values` warns
    # on 5.x and goes away in 5.40).
    kw = backend._cache_kwarg
    logits = []
    for model in (backend.model, stock):
        cache = backend.new_cache()
        with torch.inference_mode(), wim_sdpa(backend.model) as switched:
            assert switched or model is stock
            model(input_ids=torch.tensor([ids]), use_cache=True, **{kw: cache})
            out = model(
                input_ids=torch.tensor([[7, 8, 9, 10, 11, 12]]),
                position_ids=torch.tensor([[20, 21, 50, 51, 80, 81]]),
                attention_mask=mask,
                use_cache=True,
                **{kw: cache},
            )
        logits.append(out.logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_eager_models_keep_their_attention_and_pack_correctly(tiny_model_dirs):
    """`wim_sdpa` only replaces `sdpa`; packed margins under eager attention still equal the step-by-step loop."""
    from helpers import SAMPLE

    from wim_integrations import WiM, WiMConfig
    from wim_integrations.models import load_backend

    backend = load_backend(tiny_model_dirs["llama"], attn_implementation="eager")
    assert backend.model.config._attn_implementation == "eager"
    cfg = WiMConfig(segment_tokens=150, margin_max_new_tokens=6, answer_max_new_tokens=6, classifier_max_new_tokens=3)
    wim = WiM(backend, config=cfg)
    step_by_step, packed = (
        wim.run(SAMPLE, "Who keeps the lighthouse?"),
        wim.run(SAMPLE, "Who keeps the lighthouse?", margin_batch_size=4),
    )
    assert step_by_step.n_segments >= 3
    assert [(m.text, m.verdict, m.classifier_output) for m in packed.margins] == [
        (m.text, m.verdict, m.classifier_output) for m in step_by_step.margins
    ]
    assert packed.answer == step_by_step.answer
