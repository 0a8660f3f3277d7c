"""Event stream contents and order, early exit, concurrency and input validation of the engine."""

from __future__ import annotations

import asyncio
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import SAMPLE

from wim_integrations import (
    ContextTooLongError,
    InputDocument,
    WiM,
    WiMConfig,
    WiMInputError,
)
from wim_integrations.prompts import ChatFrame, PromptSet, render

CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=6, answer_max_new_tokens=6, classifier_max_new_tokens=3)
Q = "Who keeps the lighthouse?"


@pytest.fixture(scope="module")
def wim(tiny_backends):
    return WiM(tiny_backends["llama"], config=CFG)


def test_events_come_in_order_and_match_the_result(wim):
    events = list(wim.stream(SAMPLE, Q, margin_batch_size=1))  # groups: tests/core/test_batched_engine.py
    kinds = [e.type for e in events]
    n = events[0].n_segments
    assert n >= 3 and kinds[-1] == "finished" and kinds.count("finished") == 1
    # per segment: segment_read, margin tokens, margin_written; then answer_started, answer tokens, finished
    expected_order = []
    for k in kinds:
        if k not in ("margin_token", "answer_token"):
            expected_order.append(k)
    assert expected_order == ["segment_read", "margin_written"] * n + ["answer_started", "finished"]
    result = events[-1].result
    reads = [e for e in events if e.type == "segment_read"]
    written = [e for e in events if e.type == "margin_written"]
    assert [e.segment_index for e in reads] == [m.segment_index for m in written] == list(range(n))
    assert [e.margin for e in written] == result.margins
    for r, w in zip(reads, written, strict=True):
        assert r.char_span == w.margin.char_span and r.token_span == w.margin.token_span
        assert r.seconds >= 0 and w.margin.seconds >= 0
    # the streamed tokens add up to the texts
    for k in range(n):
        streamed = "".join(e.text for e in events if e.type == "margin_token" and e.segment_index == k)
        assert streamed.strip() == result.margins[k].text or result.margins[k].verdict != "unclassified"
    assert "".join(e.text for e in events if e.type == "answer_token").strip() == result.answer
    assert result.segments_read == n and not result.stopped_early
    assert result.tokens.context == sum(r.n_tokens for r in reads)
    assert result.timings.total_seconds >= result.timings.prefill_seconds > 0
    again = wim.run(SAMPLE, Q)  # greedy: deterministic
    assert _content(again) == _content(result)


def _content(result):
    """A result without its timings."""
    return result.answer, [(m.text, m.verdict, m.classifier_output, m.char_span) for m in result.margins]


def test_documents_travel_into_margins(wim):
    docs = [InputDocument(SAMPLE[:400], id="a", metadata={"src": "x"}), {"text": SAMPLE[400:900], "id": "b"}]
    result = wim.run(docs, Q)
    seen = {d.doc_id for m in result.margins for d in m.documents}
    assert seen == {"a", "b"}
    assert result.margins[0].documents[0].metadata == {"src": "x"}


def test_cancel_stops_without_an_answer(wim):
    stream = wim.stream(SAMPLE, Q)
    seen = []
    for event in stream:
        seen.append(event.type)
        if event.type == "segment_read":
            stream.cancel()
    assert "finished" not in seen and "margin_written" not in seen
    assert stream.result is None and stream.cancelled
    assert list(stream) == []


def test_closing_the_stream_early_is_safe(wim):
    stream = wim.stream(SAMPLE, Q)
    next(stream)
    stream.close()
    assert wim.run(SAMPLE, Q).answer == wim.run(SAMPLE, Q).answer  # the model is still usable


def test_answer_now_before_any_segment_answers_from_nothing_read(wim):
    stream = wim.stream(SAMPLE, Q)
    stream.answer_now()
    result = list(stream)[-1].result
    assert result.segments_read == 0 and result.margins == [] and result.stopped_early


def test_concurrent_calls_equal_sequential_calls(tiny_backends):
    wim = WiM(tiny_backends["qwen2"], config=CFG)
    questions = [Q, "What is the code of the gate?", "What is the capital of France?", "Where is Berlin?"]
    sequential = [wim.run(SAMPLE, q) for q in questions]
    barrier = threading.Barrier(len(questions))

    def call(q):
        barrier.wait()
        return wim.run(SAMPLE, q)

    with ThreadPoolExecutor(len(questions)) as pool:
        concurrent = list(pool.map(call, questions))
    for a, b in zip(sequential, concurrent, strict=True):
        assert _content(a) == _content(b)


def test_async_stream_and_run_equal_sync(wim):
    async def main():
        events = [e async for e in wim.astream(SAMPLE, Q)]
        return events, await wim.arun(SAMPLE, Q)

    events, result = asyncio.run(main())
    sync = list(wim.stream(SAMPLE, Q))
    assert [e.type for e in events] == [e.type for e in sync]
    assert _content(result) == _content(sync[-1].result)


def test_async_cancellation_stops_the_run(wim):
    async def main():
        seen = []

        async def consume():
            async for e in wim.astream(SAMPLE, Q):
                seen.append(e.type)

        task = asyncio.create_task(consume())
        while not seen:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    seen = asyncio.run(main())
    assert "finished" not in seen


# -- bad input: clear errors before any heavy compute -------------------------------------------------------
@pytest.fixture
def no_compute(tiny_backends, monkeypatch):
    b = tiny_backends["llama"]

    def boom(*a, **k):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(b, "prefill", boom)
    monkeypatch.setattr(b, "generate", boom)
    return WiM(b, config=CFG)


@pytest.mark.parametrize(
    "context, question, message",
    [
        ("", Q, "context is empty"),
        ("   \n ", Q, "context is empty"),
        (SAMPLE, "", "question is empty"),
        (SAMPLE, "  ", "question is empty"),
        (SAMPLE, 42, "question must be a string"),
        (b"bytes", Q, "decode bytes"),
        ({"a": 1}, Q, "not dict"),
        ([1, 2], Q, "context item 0"),
    ],
)
def test_bad_inputs_raise_before_compute(no_compute, context, question, message):
    with pytest.raises(WiMInputError, match=message):
        no_compute.stream(context, question)


def test_too_long_context_says_by_how_much_and_what_to_do(no_compute):
    with pytest.raises(ContextTooLongError, match=r"over by \d+.*Shorten the context") as info:
        no_compute.stream(SAMPLE * 40, Q)
    assert "4096" in str(info.value)


def test_segment_budget_smaller_than_the_instruction(no_compute):
    with pytest.raises(WiMInputError, match="smaller than the margin instruction"):
        no_compute.stream(SAMPLE, Q, segment_tokens=5)


def test_unknown_classification_mode_and_missing_classifier(no_compute):
    with pytest.raises(WiMInputError, match="same_model"):
        no_compute.stream(SAMPLE, Q, classification="vibes")
    with pytest.raises(WiMInputError, match="needs a classifier model"):
        no_compute.stream(SAMPLE, Q, classification="auxiliary")


def test_model_without_chat_template_uses_the_documented_plain_format(tiny_backends):
    tok = tiny_backends["llama"].tokenizer
    saved, tok.chat_template = tok.chat_template, None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = ChatFrame.from_tokenizer(tok)
        assert not frame.native and frame.prefix == "User:\n" and "no chat template" in str(caught[0].message)
        with pytest.raises(WiMInputError, match="has no chat template"):
            ChatFrame.from_tokenizer(tok, allow_plain=False)
    finally:
        tok.chat_template = saved


def test_chat_frame_wraps_content_exactly_like_the_chat_template(tiny_backends):
    tok = tiny_backends["llama"].tokenizer
    frame = ChatFrame.from_tokenizer(tok)
    content = "some {braces} and {{question}}"
    expected = tok.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    assert frame.prefix + content + frame.suffix == expected


def test_render_never_formats_user_text():
    out = render("Q: {{question}} / M: {{margin}}", question="{{margin}} {0} {x}", margin="m")
    assert out == "Q: {{margin}} {0} {x} / M: m"
    with pytest.raises(KeyError):
        render("{{missing}}")


def test_prompt_overrides_are_validated():
    p = PromptSet.default().with_overrides(final_answer="Q: {{question}}\n{{margins}}")
    assert p.final_answer.startswith("Q:") and p.context_opening == PromptSet.default().context_opening
    with pytest.raises(WiMInputError, match="unknown prompt"):
        PromptSet.default().with_overrides(nope="x")
    for name, text in PromptSet.default().as_dict().items():
        assert text.strip(), name
    assert "margin" in PromptSet.default().classification.lower()
    assert "margin" in PromptSet.default().final_answer.lower()
