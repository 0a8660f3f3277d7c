"""Callback handlers for WiM custom events: a typed base class and the console progress display."""

from __future__ import annotations

import logging
from typing import Any, TextIO
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from ..events import AnswerStarted, AnswerToken, Finished, MarginToken, MarginWritten, SegmentRead
from ..frontends.progress import ProgressDisplay
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
    """WiM's console progress (the display the `wim` CLI uses): a tqdm bar of segments read, each margin with its
    verdict and source documents as it is written, then the answer's start and the run's timings.

    `show_answer=True` also echoes answer tokens as they arrive; `width` is the bar's width in characters.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 24, show_answer: bool = False) -> None:
        self.stream = stream
        self.width = width
        self.show_answer = show_answer
        self._display = ProgressDisplay(stream, show_answer=show_answer, bar_width=width)

    def on_segment_read(self, event: SegmentRead, *, run_id: UUID) -> None:
        self._display.on_event(event)

    def on_margin(self, event: MarginWritten, *, run_id: UUID) -> None:
        self._display.on_event(event)

    def on_answer_started(self, event: AnswerStarted, *, run_id: UUID) -> None:
        self._display.on_event(event)

    def on_answer_token(self, event: AnswerToken, *, run_id: UUID) -> None:
        self._display.on_event(event)

    def on_wim_end(self, event: Finished, *, run_id: UUID) -> None:
        self._display.on_event(event)
