"""Callback handlers for WiM custom events: a typed base class and a console progress display."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from ..events import AnswerStarted, AnswerToken, Finished, MarginToken, MarginWritten, SegmentRead
from .events import parse_event

logger = logging.getLogger(__name__)


class WiMCallbackHandler(BaseCallbackHandler):
    """Subclass and override the hooks you need; each gets the typed engine event and the WiMChain run id.

    Pass it like any handler: ``chain.invoke(x, config={"callbacks": [MyHandler()]})``. Errors raised by a hook are
    logged and inference goes on (LangChain's rule), unless you set ``raise_error = True``.
    """

    def on_segment_read(self, event: SegmentRead, *, run_id: UUID) -> None:
        """A segment was read into the cache."""

    def on_margin_token(self, event: MarginToken, *, run_id: UUID) -> None:
        """A piece of the margin being written."""

    def on_margin(self, event: MarginWritten, *, run_id: UUID) -> None:
        """A margin is complete, with its verdict (`event.margin.verdict`, `event.margin.relevant`)."""

    def on_answer_started(self, event: AnswerStarted, *, run_id: UUID) -> None:
        """All segments are read (or reading stopped early); the answer starts."""

    def on_answer_token(self, event: AnswerToken, *, run_id: UUID) -> None:
        """A piece of the answer."""

    def on_wim_end(self, event: Finished, *, run_id: UUID) -> None:
        """The run finished; `event.result` is the `WiMResult`."""

    _HOOKS: dict[type, str] = {  # noqa: RUF012 (read-only dispatch table)
        SegmentRead: "on_segment_read",
        MarginToken: "on_margin_token",
        MarginWritten: "on_margin",
        AnswerStarted: "on_answer_started",
        AnswerToken: "on_answer_token",
        Finished: "on_wim_end",
    }

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, tags: list[str] | None = None, **kwargs: Any
    ) -> None:
        event = parse_event(name, data)
        if event is not None:
            getattr(self, self._HOOKS[type(event)])(event, run_id=run_id)


class ConsoleProgressHandler(WiMCallbackHandler):
    """Prints a progress bar of segments, each margin with its verdict as it is written, and the answer's start.

    `show_answer=True` also echoes answer tokens as they arrive.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 24, show_answer: bool = False) -> None:
        self.stream = stream
        self.width = width
        self.show_answer = show_answer

    def _write(self, text: str) -> None:
        out = self.stream or sys.stderr
        out.write(text)
        out.flush()

    def _bar(self, done: int, total: int) -> str:
        filled = round(self.width * done / max(total, 1))
        return f"[{'#' * filled}{'-' * (self.width - filled)}] {done}/{total}"

    def on_segment_read(self, event: SegmentRead, *, run_id: UUID) -> None:
        self._write(f"{self._bar(event.segment_index + 1, event.n_segments)} segments read\n")

    def on_margin(self, event: MarginWritten, *, run_id: UUID) -> None:
        m = event.margin
        mark = "kept" if m.relevant else "dropped"
        docs = ", ".join(str(d.doc_id if d.doc_id is not None else d.doc_index) for d in m.documents)
        text = " ".join(m.text.split())
        self._write(f"  margin {m.segment_index + 1} [{m.verdict}, {mark}] (docs: {docs}): {text}\n")

    def on_answer_started(self, event: AnswerStarted, *, run_id: UUID) -> None:
        self._write(
            f"answering from {event.n_relevant_margins} relevant margin(s), "
            f"{event.segments_read}/{event.n_segments} segments read\n"
        )

    def on_answer_token(self, event: AnswerToken, *, run_id: UUID) -> None:
        if self.show_answer:
            self._write(event.text)

    def on_wim_end(self, event: Finished, *, run_id: UUID) -> None:
        r = event.result
        if self.show_answer:
            self._write("\n")
        self._write(f"done in {r.timings.total_seconds:.1f}s\n")
