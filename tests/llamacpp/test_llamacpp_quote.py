"""Quoted margins on llama.cpp in process (the embedded GGUF): every margin is a contiguous span of its own segment's
tokens, checked on the tokens the backend yielded, in place and in packed rows (one sequence per row), greedy and
sampled; the log-probabilities stay the model's own. The transformers backend's checks:
tests/core/test_quoted_margins.py."""

from __future__ import annotations

import pytest
from helpers import SAMPLE, assert_quoted, record_quotes

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.base import GenerationRequest, PackedRequest, PackedRow
from wim_integrations.backends.span import SpanConstraint, is_span
from wim_integrations.config import SamplingConfig

pytestmark = pytest.mark.slow

Q = "Who keeps the lighthouse?"
BUDGET = 24
CFG = WiMConfig(
    segment_tokens=200,
    margin_max_new_tokens=BUDGET,
    answer_max_new_tokens=8,
    classification="none",
    margin_mode="quote",
)
SAMPLED = SamplingConfig(do_sample=True, temperature=1.3, top_k=40, seed=5)


@pytest.mark.parametrize(
    ("batch", "sampling", "stop"),
    [(1, SamplingConfig(), "eos"), (4, SamplingConfig(), "sentence"), (8, SAMPLED, "eos"), (1, SAMPLED, "sentence")],
    ids=["inplace-greedy", "packed-greedy", "packed-sampled", "inplace-sampled"],
)
def test_every_quoted_margin_is_a_span_of_its_segment(llamacpp_backend, monkeypatch, batch, sampling, stop):
    wim = WiM(llamacpp_backend, config=CFG, document_cache=None)
    seen = record_quotes(monkeypatch, llamacpp_backend)
    cfg = {"margin_batch_size": batch, "sampling": sampling, "margin_stop": stop}
    result = wim.run(SAMPLE, Q, **cfg)
    plan = wim.plan(SAMPLE, Q, CFG.with_updates(**cfg))
    assert plan.n_segments >= 3
    assert_quoted(llamacpp_backend, plan, result, seen, BUDGET, CFG.quote_min_tokens)
    assert any(m.n_tokens > CFG.quote_min_tokens for m in result.margins)


def test_quoted_margins_from_a_document_cache_hit_are_spans(llamacpp_backend, monkeypatch):
    wim = WiM(llamacpp_backend, config=CFG)
    wim.run(SAMPLE, Q)
    seen = record_quotes(monkeypatch, llamacpp_backend)
    q2 = "Where is the lighthouse?"
    result = wim.run(SAMPLE, q2)
    assert result.timings.context_cache == "hit"
    assert_quoted(llamacpp_backend, wim.plan(SAMPLE, q2), result, seen, BUDGET, CFG.quote_min_tokens)


def test_constrained_rows_and_free_rows_decode_together(llamacpp_backend):
    b = llamacpp_backend
    source = b.encode_text(" Mary went to the kitchen. The secret code is 4417.")
    prompt = (
        b.encode_template(b.chat_frame().prefix)
        + b.encode_text("Quote the code.")
        + b.encode_template(b.chat_frame().suffix)
    )
    cache = b.new_cache()
    b.prefill(cache, b.encode_text("Some text first."))
    base = b.cache_length(cache)
    spans = [SpanConstraint(source, 3), None, SpanConstraint(source[:5], 1)]
    req = PackedRequest([PackedRow(base, prompt)] * 3, 12, spans=spans, logprobs=[[], [], []])
    outs: list[list[int]] = [[], [], []]
    for step in b.generate_packed(cache, req):
        for i, t in step:
            outs[i].append(t)
    assert b.cache_length(cache) == base
    assert outs[0] and is_span(outs[0], source) and is_span(outs[2], source[:5]) and len(outs[2]) <= 5
    assert not is_span(outs[1], source)
    logprobs: list[float] = []
    one = list(b.generate(cache, GenerationRequest(prompt, 12, span=SpanConstraint(source, 3), logprobs=logprobs)))
    b.rollback(cache, base)
    assert is_span(one, source)
    free = b.score_rows(cache, [prompt + one])[0].token_logprobs[len(prompt) - 1 :]
    assert logprobs == pytest.approx(free, abs=0.02)  # the model's own log P, not the masked distribution's
