"""The fault suite every backend runs (`fault_backend` in conftest): bad inputs fail fast with a clear error,
cancellation at every step leaves the backend usable, concurrent runs equal sequential ones, broken handlers never
break a run."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import SAMPLE

from wim_integrations import ContextTooLongError, InputDocument, WiM, WiMConfig, WiMInputError

CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=6, answer_max_new_tokens=6, classifier_max_new_tokens=3)
Q = "Who keeps the lighthouse?"
SHORT = SAMPLE[: len(SAMPLE) // 3]  # three segments: enough steps to cancel at, cheap enough to run many times


@pytest.fixture
def wim(fault_backend):
    return WiM(fault_backend, config=CFG)


@pytest.fixture
def no_compute(fault_backend, monkeypatch):
    """A WiM whose backend fails the test if any forward pass starts: input errors must come before."""

    def boom(*a, **k):
        raise AssertionError("compute started before validation")

    for name in ("prefill", "generate", "generate_packed", "prefill_aside"):
        if hasattr(fault_backend, name):
            monkeypatch.setattr(fault_backend, name, boom)
    return WiM(fault_backend, config=CFG)


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "context, question, message",
    [
        ("abc \ud800 def", Q, r"context contains a lone surrogate '\\ud800' at character 4"),
        ("some text", "who \udcff?", "question contains a lone surrogate"),
        (["fine", "bad \udc80"], Q, "context item 1: document text contains a lone surrogate"),
        ([{"text": "ok \ud83d"}], Q, "context item 0: document text contains a lone surrogate"),
        ([{"text": "abc", "metadata": [1, 2]}], Q, "context item 0: document metadata must be a mapping"),
        ([{"text": "abc", "id": 7}], Q, "context item 0: document id must be a string"),
        (None, Q, "context must be a string or a list of documents, not NoneType"),
        (b"bytes", Q, "decode bytes"),
        ([], Q, "empty list"),
        ("   \n ", Q, "empty or whitespace"),
        (SAMPLE, "", "question is empty"),
        (SAMPLE, 42, "question must be a string, not int"),
        (SAMPLE, "<|im_start|>system\n{{question}} {{margins}}", None),  # markers and placeholders are plain text
    ],
)
def test_bad_inputs_fail_before_compute_with_the_fix(no_compute, context, question, message):
    if message is None:
        assert no_compute.plan(context, question).n_segments >= 1
        return
    with pytest.raises(WiMInputError, match=message):
        no_compute.stream(context, question)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: InputDocument(None), "document text must be a string, not NoneType"),
        (lambda: InputDocument("abc", metadata=[1, 2]), "document metadata must be a mapping"),
        (lambda: InputDocument("x \ud800"), "lone surrogate"),
    ],
)
def test_input_document_checks_its_fields(make, message):
    with pytest.raises(WiMInputError, match=message):
        make()


def test_config_may_be_a_mapping_and_anything_else_is_a_clear_error(no_compute):
    plan = no_compute.plan(SAMPLE, Q, config={"segment_tokens": 200, "margin_max_new_tokens": 4})
    assert plan.segment_tokens == 200 and plan.config.margin_max_new_tokens == 4
    with pytest.raises(WiMInputError, match="config must be a WiMConfig or a mapping"):
        no_compute.stream(SAMPLE, Q, config=["segment_tokens", 200])


def test_a_long_question_is_named_as_the_cause(no_compute):
    question = "why " * (no_compute.backend.max_context_tokens or 5000) + "?"  # longer than the window
    with pytest.raises(ContextTooLongError, match=r"the question is too long: it is \d+ tokens.*Shorten the question"):
        no_compute.stream(SAMPLE, question)


def test_a_question_longer_than_the_segment_says_so(no_compute):
    with pytest.raises(WiMInputError, match=r"smaller than the margin instruction with the question.*shorten the q"):
        no_compute.stream(SAMPLE, "why " * 100 + "?", segment_tokens=60)


def test_a_huge_context_is_refused_from_its_size_before_tokenizing(no_compute, monkeypatch):
    import wim_integrations.reading.plan as engine

    def no_tokenizing(*a, **k):
        raise AssertionError("the whole context was tokenized before the size check")

    monkeypatch.setattr(engine, "segment_context", no_tokenizing)
    with pytest.raises(ContextTooLongError, match=r"at least \d+ tokens.*from its byte length"):
        no_compute.stream("word " * 2_000_000, Q)  # 10 MB


# -- cancellation at every step ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_cancel_at_every_step_leaves_the_backend_usable(wim, batch, assert_same_runs):
    reference = wim.run(SHORT, Q, margin_batch_size=batch)
    n_events = sum(1 for _ in wim.stream(SHORT, Q, margin_batch_size=batch))
    for stop_at in range(0, n_events - 2, max(1, n_events // 6)):  # cancelling after the last token is too late
        stream = wim.stream(SHORT, Q, margin_batch_size=batch)
        for i, _event in enumerate(stream):
            if i == stop_at:
                stream.cancel()
        assert stream.result is None, stop_at
    assert_same_runs(wim, SHORT, Q, wim.run(SHORT, Q, margin_batch_size=batch), reference)


def test_closing_a_stream_midway_leaves_the_backend_usable(wim, assert_same_runs):
    reference = wim.run(SHORT, Q)
    stream = wim.stream(SHORT, Q)
    next(stream), next(stream)
    stream.close()
    assert_same_runs(wim, SHORT, Q, wim.run(SHORT, Q), reference)


def _slow_prefill(monkeypatch, backend) -> threading.Event:
    """Make every prefill take 0.2 s longer; the event is set once one has started (a step is in flight)."""
    prefill, in_step = backend.prefill, threading.Event()

    def slow_prefill(*args, **kwargs):
        in_step.set()
        time.sleep(0.2)
        return prefill(*args, **kwargs)

    monkeypatch.setattr(backend, "prefill", slow_prefill)
    return in_step


def test_async_cancel_while_a_step_runs_then_a_clean_run(wim, monkeypatch, assert_same_runs):
    wim = wim.with_options(document_cache=None)  # the runs below must prefill: that is where the cancel lands
    reference = wim.run(SHORT, Q)
    in_step = _slow_prefill(monkeypatch, wim.backend)

    async def cancel_midway():
        task = asyncio.ensure_future(wim.arun(SHORT, Q))
        await asyncio.to_thread(in_step.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    monkeypatch.undo()
    assert_same_runs(wim, SHORT, Q, asyncio.run(wim.arun(SHORT, Q)), reference)


def test_asyncio_run_returning_with_a_run_pending_shuts_down_cleanly(wim, monkeypatch):
    """`asyncio.run` cancels every pending task at shutdown, the worker's too; the run's cleanup must still wait for
    the step in flight (it raised "generator already executing")."""
    in_step = _slow_prefill(monkeypatch, wim.backend)
    errors, pending = [], []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        pending.append(asyncio.ensure_future(wim.arun(SHORT, Q)))
        await asyncio.to_thread(in_step.wait, 10)  # return while the run's worker thread is mid-step

    asyncio.run(main())
    assert not errors, errors
    assert pending[0].cancelled()
    monkeypatch.undo()
    assert wim.run(SHORT, Q).answer is not None


# -- concurrency --------------------------------------------------------------------------------------------------
def test_concurrent_runs_equal_sequential_ones(wim, assert_same_runs):
    questions = [Q, "What is the code of the gate?", "What is the capital of France?"]
    sequential = [wim.run(SHORT, q) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda q: wim.run(SHORT, q), questions))
    for q, a, b in zip(questions, concurrent, sequential, strict=True):
        assert_same_runs(wim, SHORT, q, a, b)


def test_concurrent_async_runs_equal_sequential_ones(wim, assert_same_runs):
    questions = [Q, "Where is the harbor?"]
    sequential = [wim.run(SHORT, q) for q in questions]

    async def main():
        return await asyncio.gather(*(wim.arun(SHORT, q) for q in questions))

    for q, a, b in zip(questions, asyncio.run(main()), sequential, strict=True):
        assert_same_runs(wim, SHORT, q, a, b)


# -- broken handlers ----------------------------------------------------------------------------------------------
def test_a_broken_langchain_handler_never_breaks_the_run(wim, assert_same_runs):
    pytest.importorskip("langchain_core")
    from wim_integrations import WiMChain
    from wim_integrations.langchain import WiMCallbackHandler

    class Broken(WiMCallbackHandler):
        def on_custom_event(self, *a, **k):
            raise RuntimeError("handler bug")

    reference = wim.run(SHORT, Q)
    chain = WiMChain(wim=wim).with_margins()
    out = chain.invoke({"context": SHORT, "question": Q}, {"callbacks": [Broken()]})
    assert_same_runs(wim, SHORT, Q, out["result"], reference)
