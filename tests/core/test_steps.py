"""The step lifecycle both adapters' tracers execute (steps.py), on hand-made events."""

from __future__ import annotations

from wim_integrations.events import (
    AnswerStarted,
    AnswerToken,
    Finished,
    Margin,
    MarginToken,
    MarginWritten,
    ModelCall,
    SegmentRead,
    WiMResult,
)
from wim_integrations.reading.steps import ANSWER, Abort, Close, Judged, Open, StepTracker, Stream


def _read(i: int) -> SegmentRead:
    return SegmentRead(segment_index=i, n_segments=3, char_span=(0, 1), token_span=(0, 1), n_tokens=1, seconds=0)


def _written(i: int, call: ModelCall | None = None) -> MarginWritten:
    margin = Margin(
        segment_index=i, text=f"m{i}", relevant=True, verdict="yes", char_span=(0, 1), token_span=(0, 1), n_tokens=1,
        seconds=0,
    )  # fmt: skip
    return MarginWritten(segment_index=i, n_segments=3, margin=margin, judge_call=call)


STARTED = AnswerStarted(n_relevant_margins=1, segments_read=3, n_segments=3)
FINISHED = Finished(result=WiMResult(answer="a", question="q", margins=[], n_segments=3, segments_read=3))


def _kinds(actions) -> list[tuple]:
    return [(type(a).__name__, a.step) for a in actions]


def test_margins_decoded_together_stream_into_their_own_steps():
    steps = StepTracker()
    call = ModelCall(model="m", prompt="p", prompt_tokens=3, output_tokens=1)
    events = [_read(0), _read(1), MarginToken(segment_index=1, text="b"), MarginToken(segment_index=0, text="a")]
    events += [_written(0, call), _written(1), STARTED, AnswerToken(text="x"), FINISHED]
    actions = [a for e in events for a in steps.actions(e)]
    assert _kinds(actions) == [
        ("Open", 0), ("Open", 1), ("Stream", 1), ("Stream", 0), ("Close", 0), ("Judged", 0), ("Close", 1),
        ("Open", ANSWER), ("Stream", ANSWER), ("Close", ANSWER),
    ]  # fmt: skip
    assert actions[2] == Stream(1, "b") and isinstance(actions[5], Judged) and actions[5].call == call
    assert isinstance(actions[-1], Close) and actions[-1].event is FINISHED and steps.open_steps == []


def test_segments_read_but_not_annotated_are_aborted_when_the_answer_starts():
    steps = StepTracker()
    for e in (_read(0), _written(0), _read(1)):
        steps.actions(e)
    assert steps.actions(STARTED) == [Abort(1, unannotated=True), Open(ANSWER, STARTED)]


def test_without_an_answer_step_and_an_abandoned_run():
    steps = StepTracker(answer=False)
    steps.actions(_read(0))
    assert steps.actions(STARTED) == [Abort(0, unannotated=True)]
    assert steps.actions(AnswerToken(text="x")) == [] and steps.actions(FINISHED) == []
    steps = StepTracker()
    steps.actions(_read(0))
    steps.actions(_read(1))
    assert steps.actions(MarginToken(segment_index=2, text="?")) == []  # a token of no open step: nothing
    assert steps.abort_all() == [Abort(0, unannotated=False), Abort(1, unannotated=False)]
    assert steps.abort_all() == [] and steps.actions(_written(0)) == []  # closed already: nothing to close
