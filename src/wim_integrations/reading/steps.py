"""The step lifecycle of a run, as tracers show it: which step opens, streams, closes or aborts on which event.

A step is one margin (keyed by its segment's index) or the answer (`ANSWER`). LangChain's relay (child runs) and
LlamaIndex's tracer (spans and legacy callback events) both execute the actions a `StepTracker` derives from the
events; each only maps them to its own framework calls. The rules, once:

- `SegmentRead` opens the segment's step; its `MarginToken`s stream into it; `MarginWritten` closes it, followed by
  a `Judged` step when a classifier call judged the margin. Margins decoded together are open together, their tokens
  interleaved: each goes to its own step.
- `AnswerStarted` aborts the steps of segments read but never annotated (a run stopped with `answer_now()`), then
  opens the answer step (unless the tracer's own run is the answer); `AnswerToken`s stream into it and `Finished`
  closes it.
- `abort_all()`: the run failed or was abandoned; every step still open is aborted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from ..events import AnswerStarted, AnswerToken, Finished, MarginToken, MarginWritten, ModelCall, SegmentRead

ANSWER: Final = "answer"
Step = int | Literal["answer"]


@dataclass(frozen=True)
class Open:
    step: Step
    event: SegmentRead | AnswerStarted


@dataclass(frozen=True)
class Stream:
    step: Step
    text: str


@dataclass(frozen=True)
class Close:
    step: Step
    event: MarginWritten | Finished


@dataclass(frozen=True)
class Judged:
    """The classifier call that judged a margin just closed: a step of its own, already complete."""

    step: int
    call: ModelCall
    event: MarginWritten


@dataclass(frozen=True)
class Abort:
    step: Step
    unannotated: bool  # True: a segment read without a margin (answer_now); False: the run failed or was abandoned


StepAction = Open | Stream | Close | Judged | Abort


class StepTracker:
    """Which steps of one run are open, and the actions each event brings. `answer=False`: no answer step."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self._open: dict[Step, None] = {}  # open steps, in the order they opened

    @property
    def open_steps(self) -> list[Step]:
        return list(self._open)

    def actions(self, event: Any) -> list[StepAction]:
        if isinstance(event, SegmentRead):
            return [self._opened(event.segment_index, event)]
        if isinstance(event, MarginToken):
            return [Stream(event.segment_index, event.text)] if event.segment_index in self._open else []
        if isinstance(event, MarginWritten):
            step = event.segment_index
            if not self._closed(step):
                return []
            closed: list[StepAction] = [Close(step, event)]
            if event.judge_call is not None:
                closed.append(Judged(step, event.judge_call, event))
            return closed
        if isinstance(event, AnswerStarted):
            unannotated: list[StepAction] = [Abort(step, unannotated=True) for step in self._open]
            self._open.clear()
            return unannotated + ([self._opened(ANSWER, event)] if self.answer else [])
        if isinstance(event, AnswerToken):
            return [Stream(ANSWER, event.text)] if ANSWER in self._open else []
        if isinstance(event, Finished) and self._closed(ANSWER):
            return [Close(ANSWER, event)]
        return []

    def abort_all(self) -> list[Abort]:
        """Abort every open step (the run failed, was cancelled, or stopped before its end)."""
        aborted = [Abort(step, unannotated=False) for step in self._open]
        self._open.clear()
        return aborted

    def _closed(self, step: Step) -> bool:
        """Close `step`; False when it was not open (nothing to close)."""
        if step not in self._open:
            return False
        del self._open[step]
        return True

    def _opened(self, step: Step, event: SegmentRead | AnswerStarted) -> Open:
        self._open[step] = None
        return Open(step, event)
