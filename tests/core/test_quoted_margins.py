"""Quoted margins (`margin_mode="quote"`) on the transformers backend: every margin is a contiguous span of its own
segment's tokens, checked token by token on what the backend yielded, in place (margin_batch_size=1) and in packed
rows, greedy and sampled, from a fresh read and from a document-cache hit; the free mode (the default) is not
constrained; quoted margins are refused where the backend cannot decode under a constraint. The embedded model's check
is slow (tests/llamacpp/test_llamacpp_quote.py has llama.cpp's)."""

from __future__ import annotations

import pytest
from fake_backend import FakeBackend
from helpers import SAMPLE, assert_quoted, record_quotes

from wim_integrations import WiM, WiMConfig
from wim_integrations.analysis import Analysis
from wim_integrations.backends.base import GenerationRequest, PackedRequest, PackedRow
from wim_integrations.backends.span import SpanConstraint, is_span
from wim_integrations.config import SamplingConfig
from wim_integrations.errors import SettingsError, WiMInputError

Q = "Who keeps the lighthouse?"
BUDGET = 12
CFG = WiMConfig(
    segment_tokens=160,
    margin_max_new_tokens=BUDGET,
    answer_max_new_tokens=8,
    classification="none",
    margin_stop="eos",
    margin_mode="quote",
)
SAMPLED = SamplingConfig(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, repetition_penalty=1.3, seed=7)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("sampling", [SamplingConfig(), SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize(("min_tokens", "loose"), [(1, False), (4, True)], ids=["min1-exact", "min4-loose"])
def test_every_quoted_margin_is_a_span_of_its_segment(tiny_backend, monkeypatch, batch, sampling, min_tokens, loose):
    wim = WiM(tiny_backend, config=CFG, document_cache=None)
    seen = record_quotes(monkeypatch, tiny_backend)
    cfg = {"margin_batch_size": batch, "sampling": sampling, "quote_min_tokens": min_tokens, "quote_loose_start": loose}
    result = wim.run(SAMPLE, Q, **cfg)
    plan = wim.plan(SAMPLE, Q, CFG.with_updates(**cfg))
    assert plan.n_segments >= 4
    assert_quoted(tiny_backend, plan, result, seen, BUDGET, min_tokens)


def test_quoted_margins_from_a_document_cache_hit_are_spans_too(tiny_backends, monkeypatch):
    backend = tiny_backends["llama"]
    wim = WiM(backend, config=CFG.with_updates(margin_batch_size=1))
    wim.run(SAMPLE, Q)  # reads the document and stores it
    seen = record_quotes(monkeypatch, backend)
    result = wim.run(SAMPLE, "Where is the lighthouse?")
    assert result.timings.context_cache == "hit"
    assert_quoted(backend, wim.plan(SAMPLE, "Where is the lighthouse?"), result, seen, BUDGET, CFG.quote_min_tokens)


def test_packed_quotes_equal_in_place_quotes_greedy(tiny_backend):
    wim = WiM(tiny_backend, config=CFG, document_cache=None)
    one = wim.run(SAMPLE, Q, margin_batch_size=1)
    grouped = wim.run(SAMPLE, Q, margin_batch_size=8)
    assert [m.text for m in one.margins] == [m.text for m in grouped.margins]
    assert one.answer == grouped.answer


def test_free_margins_are_not_constrained(tiny_backends, monkeypatch):
    """The control: the same run in the default mode writes margins that are no span of their segment (the tiny
    models write nonsense), so the checks above can fail; and no request carries a constraint."""
    backend = tiny_backends["llama"]
    seen = record_quotes(monkeypatch, backend)
    free = WiM(backend, config=CFG.with_updates(margin_mode="free"), document_cache=None).run(SAMPLE, Q)
    assert seen == []
    segments = {m.segment_index: m for m in free.margins}
    assert any(m.text and m.text not in SAMPLE for m in segments.values())


def test_the_default_margin_mode_is_free():
    assert WiMConfig().margin_mode == "free" and WiMConfig().quote_min_tokens >= 1


@pytest.mark.parametrize("batch", [1, 3])
def test_backend_requests_carry_the_constraint(tiny_backends, batch):
    """At the protocol level: a span constraint on `generate` and per row on `generate_packed`; the log-probabilities
    stay the model's own (unmasked), so they equal those of a free decoding of the same tokens."""
    b = tiny_backends["qwen2"]
    source = b.encode_text("Mary went to the kitchen. The secret code is 4417.")
    prompt = b.encode_template("<|im_start|>user\nQuote<|im_end|>\n<|im_start|>assistant\n")
    cache = b.new_cache()
    b.prefill(cache, b.encode_text("Some text first."))
    base = b.cache_length(cache)
    if batch == 1:
        logprobs: list[float] = []
        out = list(b.generate(cache, GenerationRequest(prompt, 10, span=SpanConstraint(source, 3), logprobs=logprobs)))
        b.rollback(cache, base)
        rows = [out]
    else:
        spans = [SpanConstraint(source, 3), None, SpanConstraint(source[:5], 1)]
        req = PackedRequest([PackedRow(base, prompt)] * 3, 10, spans=spans, logprobs=[[], [], []])
        outs: list[list[int]] = [[], [], []]
        for step in b.generate_packed(cache, req):
            for i, t in step:
                outs[i].append(t)
        rows = [outs[0], outs[2]]
        assert not is_span(outs[1], source)  # the free row is free
        assert len(outs[2]) <= 5 and is_span(outs[2], source[:5])
        logprobs = req.logprobs[0]  # type: ignore[index]
    assert b.cache_length(cache) == base
    assert all(is_span(r, source) and r for r in rows)
    free = b.score_rows(cache, [prompt + rows[0]])[0].token_logprobs[len(prompt) - 1 :]
    assert logprobs == pytest.approx(free, abs=1e-4)


def test_quote_is_refused_where_the_backend_cannot_constrain_decoding():
    backend = FakeBackend()  # declares no constrained_margins
    with pytest.raises(WiMInputError, match=r"margin_mode='quote'.*margin_mode='free'"):
        WiM(backend, config=CFG)
    wim = WiM(backend, config=CFG.with_updates(margin_mode="free"))
    with pytest.raises(WiMInputError, match="margin_mode='quote'"):
        wim.run(SAMPLE, Q, margin_mode="quote")
    with pytest.raises(WiMInputError, match="cannot apply"):
        list(backend.generate(backend.new_cache(), GenerationRequest([1], 4, span=SpanConstraint([2]))))


def test_quote_with_inline_verdicts_or_a_note_schema_is_refused(tiny_backends):
    with pytest.raises(SettingsError, match="inline"):
        WiMConfig(margin_mode="quote", classification="inline")
    from pydantic import BaseModel

    class Note(BaseModel):
        who: str

    wim = WiM(tiny_backends["llama"], config=CFG)
    with pytest.raises(WiMInputError, match="schema"):
        wim.plan(SAMPLE, Analysis.create("Who is who?", schema=Note))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8])
def test_quoted_margins_of_the_embedded_model_are_spans(default_wim, monkeypatch, batch):
    wim = default_wim.with_options(document_cache=None)
    cfg = dict(segment_tokens=256, margin_max_new_tokens=24, margin_mode="quote", margin_batch_size=batch)
    seen = record_quotes(monkeypatch, wim.backend)
    result = wim.run(SAMPLE, Q, **cfg)
    plan = wim.plan(SAMPLE, Q, wim.config.with_updates(**cfg))
    assert_quoted(wim.backend, plan, result, seen, 24, wim.config.quote_min_tokens)
    assert any(m.n_tokens >= 4 for m in result.margins)
