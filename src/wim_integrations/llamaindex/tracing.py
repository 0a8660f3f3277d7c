"""Translate the core's WiM events into LlamaIndex instrumentation (spans + events) and legacy callbacks.

Spans are entered with explicit parent ids and events carry explicit span ids, so the tree stays right whichever
thread or task consumes the run (a streamed answer is often read after `synthesize` has returned).
"""

from __future__ import annotations

import inspect
import logging
import uuid
from typing import Any

from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import Dispatcher

from ..events import AnswerStarted, Finished, MarginWritten, SegmentRead, WiMResult
from ..reading.steps import ANSWER, Abort, Close, Open, Step, StepTracker, Stream
from .events import (
    WiMAnswerEvent,
    WiMAnswerStartEvent,
    WiMAnswerTokenEvent,
    WiMMarginEvent,
    WiMMarginTokenEvent,
    WiMSegmentReadEvent,
)

logger = logging.getLogger(__name__)


# Signatures that describe each WiM step to span handlers (they receive these bound arguments).
def wim_read(query_str: str, n_documents: int) -> None: ...
def wim_segment(segment_index: int, n_segments: int) -> None: ...
def wim_answer(n_relevant_margins: int, segments_read: int) -> None: ...


class RunTracer:
    """Spans `wim_read` > (`wim_segment` per segment, then `wim_answer`) under `parent_id`, plus events.

    Margins decoded together are open together: each step (a segment's index, or "answer") has its own span and legacy
    event, and every event names the span of its own step.

    Every dispatch is guarded: a broken handler or callback is logged and never breaks the run.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        instance: Any,
        parent_id: str | None,
        callback_manager: CallbackManager | None,
        query_str: str,
        texts: dict[str, str],
    ) -> None:
        self.dispatcher = dispatcher
        self.instance = instance
        self.parent_id = parent_id
        self.callback_manager = callback_manager
        self.query_str = query_str
        self.texts = texts  # document id -> text, to show a segment's text as the legacy LLM prompt
        self.run_id: str | None = None
        self._tracker = StepTracker()  # which step opens, streams, closes or aborts on which event
        self._steps: dict[Step, tuple[str, inspect.BoundArguments]] = {}  # open step -> (span id, its args)
        self._cb_event_ids: dict[Step, str] = {}  # open step -> legacy event id

    # -- spans -----------------------------------------------------------------------------------------
    def _enter(self, fn: Any, parent: str | None, **args: Any) -> tuple[str, inspect.BoundArguments]:
        name = type(self.instance).__name__
        span_id = f"{name}.{fn.__name__}-{uuid.uuid4()}"
        bound = inspect.signature(fn).bind(**args)
        self.dispatcher.span_enter(id_=span_id, bound_args=bound, instance=self.instance, parent_id=parent)
        return span_id, bound

    def start(self, n_documents: int) -> None:
        self.run_id, self._run_args = self._enter(
            wim_read, self.parent_id, query_str=self.query_str, n_documents=n_documents
        )

    def _open_step(self, step: Step, fn: Any, **args: Any) -> str:
        self._close_step(step, None)
        self._steps[step] = self._enter(fn, self.run_id, **args)
        return self._steps[step][0]

    def _span(self, step: Step) -> str | None:
        return self._steps[step][0] if step in self._steps else None

    def _close_step(self, step: Step, result: Any) -> None:
        if (opened := self._steps.pop(step, None)) is not None:
            span_id, bound = opened
            self.dispatcher.span_exit(id_=span_id, bound_args=bound, instance=self.instance, result=result)

    def _close_all(self, result: Any) -> None:
        for step in list(self._steps):
            self._close_step(step, result)

    def finish(self, result: WiMResult) -> None:
        self._close_all(result.answer)
        if self.run_id is not None:
            self.dispatcher.span_exit(id_=self.run_id, bound_args=self._run_args, instance=self.instance, result=result)
            self.run_id = None

    def finish_reading(self, margins: list[Any]) -> None:
        """A run that stops after its margins (no answer): close the open steps and the run with the margins."""
        self._tracker.abort_all()
        self._close_all(None)
        if self.run_id is not None:
            args = self._run_args
            self.dispatcher.span_exit(id_=self.run_id, bound_args=args, instance=self.instance, result=margins)
            self.run_id = None

    def abort(self, err: BaseException | None) -> None:
        """The run failed or was abandoned: drop the open spans and end an open legacy event."""
        err = err or RuntimeError("WiM run stopped before it finished")
        for action in self._tracker.abort_all():
            if (opened := self._steps.pop(action.step, None)) is not None:
                self.dispatcher.span_drop(id_=opened[0], bound_args=opened[1], instance=self.instance, err=err)
            self._cb_end(action.step, {EventPayload.EXCEPTION: err})
        if self.run_id is not None:
            self.dispatcher.span_drop(id_=self.run_id, bound_args=self._run_args, instance=self.instance, err=err)
            self.run_id = None

    # -- events ----------------------------------------------------------------------------------------
    def _fire(self, event: Any) -> None:
        try:
            self.dispatcher.event(event)
        except Exception:  # the dispatcher guards handlers; this guards our own translation
            logger.exception("WiM: dispatching %s failed; the run goes on", type(event).__name__)

    def _cb_start(self, step: Step, payload: dict[str, Any]) -> None:
        if self.callback_manager is None:
            return
        try:
            self._cb_event_ids[step] = self.callback_manager.on_event_start(CBEventType.LLM, payload=payload)
        except Exception:
            logger.exception("WiM: a legacy callback handler failed on LLM start; the run goes on")

    def _cb_end(self, step: Step, payload: dict[str, Any]) -> None:
        event_id = self._cb_event_ids.pop(step, None)
        if self.callback_manager is None or event_id is None:
            return
        try:
            self.callback_manager.on_event_end(CBEventType.LLM, payload=payload, event_id=event_id)
        except Exception:
            logger.exception("WiM: a legacy callback handler failed on LLM end; the run goes on")

    def on_event(self, ev: Any) -> None:
        for action in self._tracker.actions(ev):
            if isinstance(action, Open):
                self._open(action.step, action.event)
            elif isinstance(action, Stream):
                self._stream(action.step, action.text)
            elif isinstance(action, Close):
                self._close(action.step, action.event)
            elif isinstance(action, Abort):  # a segment read without a margin (answer_now): closed empty
                self._cb_end(action.step, {EventPayload.COMPLETION: ""})
                self._close_step(action.step, None)
            # Judged: the classifier's call is part of the margin's step here (its verdict is on WiMMarginEvent)

    def _open(self, step: Step, ev: SegmentRead | AnswerStarted) -> None:
        if isinstance(ev, AnswerStarted):
            span_id = self._open_step(
                step, wim_answer, n_relevant_margins=ev.n_relevant_margins, segments_read=ev.segments_read
            )
            self._fire(
                WiMAnswerStartEvent(
                    span_id=span_id,
                    n_relevant_margins=ev.n_relevant_margins,
                    segments_read=ev.segments_read,
                    n_segments=ev.n_segments,
                    prompt=ev.prompt,
                    prompt_tokens=ev.prompt_tokens,
                )
            )
            payload = {EventPayload.PROMPT: ev.prompt, EventPayload.QUERY_STR: self.query_str, "wim_step": "answer"}
            self._cb_start(step, payload)
            return
        i = ev.segment_index
        span_id = self._open_step(i, wim_segment, segment_index=i, n_segments=ev.n_segments)
        node_ids = [d.doc_id for d in ev.documents if d.doc_id]
        self._fire(
            WiMSegmentReadEvent(
                span_id=span_id,
                segment_index=i,
                n_segments=ev.n_segments,
                n_tokens=ev.n_tokens,
                node_ids=node_ids,
                seconds=ev.seconds,
            )
        )
        text = "".join(self.texts.get(d.doc_id or "", "")[d.start_char : d.end_char] for d in ev.documents)
        self._cb_start(
            i,
            {
                EventPayload.PROMPT: text,
                EventPayload.QUERY_STR: self.query_str,
                "wim_step": "margin",
                "segment_index": i,
                "node_ids": node_ids,
            },
        )

    def _stream(self, step: Step, text: str) -> None:
        if step == ANSWER:
            self._fire(WiMAnswerTokenEvent(span_id=self._span(step), delta=text))
        else:
            self._fire(WiMMarginTokenEvent(span_id=self._span(step), segment_index=step, delta=text))

    def _close(self, step: Step, ev: MarginWritten | Finished) -> None:
        if isinstance(ev, Finished):
            r = ev.result
            self._fire(
                WiMAnswerEvent(
                    span_id=self._span(step),
                    answer=r.answer,
                    n_segments=r.n_segments,
                    segments_read=r.segments_read,
                    stopped_early=r.stopped_early,
                    result=r.model_dump(mode="json"),
                )
            )
            self._cb_end(step, {EventPayload.COMPLETION: r.answer})
            self.finish(r)
            return
        m = ev.margin
        self._fire(
            WiMMarginEvent(
                span_id=self._span(step),
                segment_index=m.segment_index,
                n_segments=ev.n_segments,
                text=m.text,
                relevant=m.relevant,
                score=m.score,
                verdict=m.verdict,
                node_ids=[d.doc_id for d in m.documents if d.doc_id],
                documents=[d.model_dump(mode="json") for d in m.documents],
                seconds=m.seconds,
                prompt_tokens=ev.prompt_tokens,
            )
        )
        self._cb_end(step, {EventPayload.COMPLETION: m.text, "relevant": m.relevant, "verdict": m.verdict})
        self._close_step(step, m.text)
