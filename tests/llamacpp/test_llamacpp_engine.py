"""WiM on the llama.cpp backend, end to end on the embedded GGUF: the same checks as the transformers backend's
equivalence and behaviour suites (tests/core), with llama.cpp's near-tie tolerance where floats decide a token
(tests/llama_cpp_agreement.py); the fault suite runs on it through `fault_backend` ("llama.cpp-inproc")."""

from __future__ import annotations

import math

import pytest
from helpers import SAMPLE
from llama_cpp_agreement import assert_run_equals_plain_generation_inproc, assert_same_run_inproc

from wim_integrations import WiM, WiMConfig

pytestmark = pytest.mark.slow

# Margins run to the stop token or budget, like the plain `generate` they are compared with.
CFG = WiMConfig(
    segment_tokens=200, margin_max_new_tokens=16, answer_max_new_tokens=16, classification="none", margin_stop="eos"
)
Q = "Who keeps the lighthouse?"


@pytest.fixture(scope="module")
def wim(llamacpp_backend):
    return WiM(
        llamacpp_backend, config=CFG, document_cache=None
    )  # each run reads (cache hits: test_llamacpp_doc_cache)


@pytest.mark.parametrize("batch", [1, 4])
def test_every_margin_and_the_answer_equal_plain_generation_on_the_same_tokens(wim, batch):
    plan = wim.plan(SAMPLE, Q)
    assert plan.n_segments >= 3
    result = wim.run(SAMPLE, Q, margin_batch_size=batch)
    assert_run_equals_plain_generation_inproc(wim, plan, result)


def test_grouped_margins_equal_step_by_step_ones(wim):
    one = wim.run(SAMPLE, Q, margin_batch_size=1)
    grouped = wim.run(SAMPLE, Q, margin_batch_size=8)
    assert_same_run_inproc(wim.backend, wim, wim.plan(SAMPLE, Q), one, grouped)


def test_events_stream_in_order_and_add_up_to_the_result(wim):
    events = list(wim.stream(SAMPLE, Q, margin_batch_size=1))
    kinds = [e.type for e in events if e.type not in ("margin_token", "answer_token")]
    n = events[0].n_segments
    assert kinds == ["segment_read", "margin_written"] * n + ["answer_started", "finished"]
    result = events[-1].result
    for k in range(n):
        streamed = "".join(e.text for e in events if e.type == "margin_token" and e.segment_index == k)
        assert streamed.strip() == result.margins[k].text
    assert "".join(e.text for e in events if e.type == "answer_token").strip() == result.answer


@pytest.mark.parametrize("mode", ["segment_pmi", "question_pmi", "pmi"])
def test_probability_relevance_runs_here_with_finite_scores(llamacpp_backend, mode):
    """segment_pmi, question_pmi and pmi need row scoring and generation log-probabilities: on the server backend they
    fall back to lexical; here they run."""
    cfg = CFG.model_copy(update={"classification": mode, "margin_stop": "sentence"})
    result = WiM(llamacpp_backend, config=cfg).run(SAMPLE, Q)
    assert result.margins
    assert all(m.score is not None and math.isfinite(m.score) for m in result.margins)
    assert all(m.verdict in ("yes", "no") for m in result.margins)


def test_same_model_classification(llamacpp_backend):
    wim = WiM(llamacpp_backend, config=CFG.model_copy(update={"classification": "same_model"}))
    result = wim.run(SAMPLE, Q)
    assert all(m.verdict != "unclassified" for m in result.margins)
