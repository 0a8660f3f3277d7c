"""Reading without a question: summaries and analyses (notes under an instruction, a report from text + notes)."""

from __future__ import annotations

import asyncio

import pytest
from helpers import SAMPLE, plain_text
from pydantic import BaseModel

from wim_integrations import (
    Analysis,
    ContextTooLongError,
    DocumentCache,
    InputDocument,
    WiM,
    WiMConfig,
    WiMInputError,
    WiMSummary,
)
from wim_integrations.analysis import DEFAULT_NOTE_INSTRUCTION, DEFAULT_SUMMARY_INSTRUCTION
from wim_integrations.prompts import render

CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=10, answer_max_new_tokens=10, classifier_max_new_tokens=3)


class Obligation(BaseModel):
    party: str
    deadline: str


@pytest.fixture(scope="module")
def wim(tiny_backends):
    return WiM(tiny_backends["llama"], config=CFG)


def _content(r):
    return r.answer, [(m.text, m.verdict, m.char_span, m.data, m.parse_error) for m in r.notes], r.segments_read


def test_summary_notes_and_report_equal_plain_generation_on_the_same_tokens(tiny_backend):
    """The margin prompt is the note instruction, every note is kept, and the final prompt is the report prompt."""
    wim = WiM(tiny_backend, config=CFG)
    task = Analysis.summary()
    plan = wim.plan(SAMPLE, task)
    assert plan.n_segments >= 3 and plan.config.classification == "none"
    result = wim.summarize(SAMPLE)
    assert isinstance(result, WiMSummary)
    assert result.question == "" and result.instruction == DEFAULT_SUMMARY_INSTRUCTION and result.summary
    assert result.summary == result.answer and result.notes == result.margins
    note_prompt = render(wim.prompts.note_instruction, instruction=DEFAULT_NOTE_INSTRUCTION, format="")
    assert plan.margin_prompt_ids == tiny_backend.encode_text(note_prompt) + tiny_backend.encode_template(
        wim.frame.suffix
    )
    context = list(plan.context.token_ids)
    for note, seg in zip(result.notes, plan.context.segments, strict=True):
        assert note.verdict == "unclassified" and note.relevant and note.classifier_output is None
        ids = plan.head_ids + context[: seg.end_token] + plan.margin_prompt_ids
        assert note.text == plain_text(tiny_backend, ids, CFG.margin_max_new_tokens)
    final = wim.final_prompt_ids(task, result.notes, plan.n_segments)
    report = tiny_backend.decode(final)
    assert (
        DEFAULT_SUMMARY_INSTRUCTION in report
        and "Note 1 (part 1 of" in report
        and "Now answer the question" not in report
    )
    assert result.summary == plain_text(tiny_backend, plan.head_ids + context + final, CFG.answer_max_new_tokens)


def test_analysis_instruction_reaches_notes_and_report(wim):
    plan = wim.plan(SAMPLE, Analysis.create("List every code and its gate."))
    text = wim.backend.decode(plan.margin_prompt_ids)
    assert "for this task: List every code and its gate." in text
    separate = wim.plan(SAMPLE, Analysis.create("Report the codes.", note_instruction="Copy every number."))
    assert "for this task: Copy every number." in wim.backend.decode(separate.margin_prompt_ids)
    final = wim.backend.decode(wim.final_prompt_ids(separate.analysis, [], separate.n_segments))
    assert "Report the codes." in final and wim.prompts.no_notes in final


def test_notes_carry_spans_and_document_ids(wim):
    docs = [InputDocument(SAMPLE[:400], id="a", metadata={"p": 1}), InputDocument(SAMPLE[400:900], id="b")]
    events = list(wim.stream(docs, Analysis.summary()))
    result = events[-1].result
    assert isinstance(result, WiMSummary)
    reads = [e for e in events if e.type == "segment_read"]
    assert [e.margin for e in events if e.type == "margin_written"] == result.notes
    assert {d.doc_id for n in result.notes for d in n.documents} == {"a", "b"}
    for r, note in zip(reads, result.notes, strict=True):
        assert (r.char_span, r.token_span, r.documents) == (note.char_span, note.token_span, note.documents)
    assert events[-1].model_dump(mode="json")["result"]["instruction"] == DEFAULT_SUMMARY_INSTRUCTION  # payloads
    started = next(e for e in events if e.type == "answer_started")
    assert started.n_relevant_margins == len(result.notes)  # every note is used


def test_config_classification_does_not_apply_to_notes(tiny_backends):
    scored = WiM(tiny_backends["llama"], config=CFG.with_updates(classification="pmi", relevance_threshold=0.5))
    result = scored.summarize(SAMPLE)
    assert all(n.verdict == "unclassified" and n.score is None for n in result.notes)
    assert _content(result) == _content(WiM(tiny_backends["llama"], config=CFG).summarize(SAMPLE))


def test_batched_notes_equal_step_by_step(tiny_backend):
    wim = WiM(tiny_backend, config=CFG)
    assert _content(wim.summarize(SAMPLE, margin_batch_size=3)) == _content(wim.summarize(SAMPLE))


def test_summary_after_a_question_reuses_the_prefilled_document(tiny_backend):
    plain = WiM(tiny_backend, config=CFG)
    cached = WiM(tiny_backend, config=CFG, document_cache=DocumentCache())
    assert cached.run(SAMPLE, "Who keeps the lighthouse?").timings.context_cache == "miss"
    summary = cached.summarize(SAMPLE)
    assert summary.timings.context_cache == "hit"
    assert _content(summary) == _content(plain.summarize(SAMPLE))
    again = cached.analyze(SAMPLE, "List the codes.", margin_batch_size=2)
    assert again.timings.context_cache == "hit"
    assert _content(again) == _content(plain.analyze(SAMPLE, "List the codes."))


def test_answer_now_and_cancel(wim):
    stream = wim.stream(SAMPLE, Analysis.summary(), margin_batch_size=1)  # step by step: a note, then the next read
    for event in stream:
        if event.type == "margin_written":
            stream.answer_now()
    assert stream.result is not None and stream.result.segments_read == 1 and stream.result.stopped_early
    assert len(stream.result.notes) == 1 and isinstance(stream.result, WiMSummary)

    stream = wim.stream(SAMPLE, Analysis.summary())
    for event in stream:
        if event.type == "segment_read":
            stream.cancel()
    assert stream.result is None and stream.cancelled


def test_async_run_equals_sync(wim):
    result = asyncio.run(wim.arun(SAMPLE, Analysis.summary("Summarise in two lines.")))
    assert isinstance(result, WiMSummary) and result.instruction == "Summarise in two lines."
    assert _content(result) == _content(wim.summarize(SAMPLE, "Summarise in two lines."))


# -- schemas --------------------------------------------------------------------------------------------------------
def test_schema_notes_are_requested_validated_and_never_dropped(wim):
    task = Analysis.create("List every obligation.", schema=Obligation)
    roomy = CFG.with_updates(margin_max_new_tokens=40, segment_tokens=300)
    assert '"party": "<string>"' in wim.backend.decode(wim.plan(SAMPLE, task, roomy).margin_prompt_ids)
    result = wim.analyze(SAMPLE, "List every obligation.", schema=Obligation, config=roomy)
    assert result.schema_name == "Obligation"
    # The tiny random model writes no JSON: every note is reported invalid, kept with its text and still used.
    assert result.invalid_notes == result.notes and len(result.notes) == result.n_segments
    assert all(n.relevant and n.data is None and n.parse_error for n in result.notes)


def test_note_parsing():
    task = Analysis.create("x", schema=Obligation)
    assert task.parse('Note: {"party": "Acme", "deadline": "May 3"} done') == (
        {"party": "Acme", "deadline": "May 3"},
        None,
    )
    data, error = task.parse('{"party": "Acme"}')
    assert data is None and "Obligation" in error and "deadline" in error
    assert task.parse("Nothing new.") == (None, "no JSON object in the note")
    assert task.parse("{not json}")[1].startswith("does not match Obligation")
    assert Analysis.create("x").parse("{}") == (None, None)  # no schema: nothing to validate


# -- bad input: clear errors before any forward pass ----------------------------------------------------------------
@pytest.fixture
def no_compute(tiny_backends, monkeypatch):
    b = tiny_backends["llama"]

    def boom(*a, **k):
        raise AssertionError("compute started before validation")

    for name in ("prefill", "generate", "generate_packed"):
        monkeypatch.setattr(b, name, boom)
    return WiM(b, config=CFG)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda w: w.summarize(SAMPLE, ""), "instruction is empty"),
        (lambda w: w.summarize(SAMPLE, "  \n"), "instruction is empty"),
        (lambda w: w.analyze(SAMPLE, 3), "instruction must be a string"),
        (lambda w: w.analyze(SAMPLE, "List.", note_instruction=" "), "note_instruction is empty"),
        (lambda w: w.analyze(SAMPLE, "List.", schema={"party": str}), "schema must be a pydantic model class"),
        (lambda w: w.analyze(SAMPLE, "List.", schema=Obligation(party="a", deadline="b")), "not an instance"),
        (lambda w: w.analyze(SAMPLE, "List.", schema=dict), "pydantic model class"),
        (lambda w: w.analyze(SAMPLE, "List.", schema=Obligation, margin_max_new_tokens=3), "too small for notes"),
        (lambda w: w.summarize(""), "context is empty"),
    ],
)
def test_bad_input_raises_before_compute(no_compute, call, message):
    with pytest.raises(WiMInputError, match=message):
        call(no_compute)


def test_document_beyond_the_window_raises_before_compute(no_compute):
    with pytest.raises(ContextTooLongError, match=r"over by \d+"):
        no_compute.summarize(SAMPLE * 40)
