"""Ready event handlers: console progress, and a margin collector for UIs.

Register on the root dispatcher (sees every WiM event):
    from llama_index.core.instrumentation import get_dispatcher
    get_dispatcher().add_event_handler(WiMProgressHandler())
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from ..frontends.progress import ProgressDisplay
from .events import WiMAnswerEvent, WiMAnswerStartEvent, WiMMarginEvent, WiMSegmentReadEvent


class WiMProgressHandler(BaseEventHandler):
    """WiM's console progress (the display the `wim` CLI uses): a tqdm bar of segments read, each margin with its
    verdict and node ids as it is written, the answer's start and the run's timings."""

    show_margins: bool = True
    width: int = Field(100, ge=10, description="margin text is shortened to this many characters")
    stream: Any = Field(default=None, exclude=True, description="a text stream; sys.stderr when None")
    _display: ProgressDisplay | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "WiMProgressHandler"

    @property
    def display(self) -> ProgressDisplay:
        if self._display is None:
            self._display = ProgressDisplay(self.stream, show_margins=self.show_margins, margin_width=self.width)
        return self._display

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        d = self.display
        if isinstance(event, WiMSegmentReadEvent):
            d.segment_read(event.segment_index, event.n_segments, event.n_tokens, event.seconds)
        elif isinstance(event, WiMMarginEvent):
            d.margin(
                event.segment_index,
                event.verdict,
                event.relevant,
                event.text,
                event.seconds,
                event.node_ids,
                event.score,
            )
        elif isinstance(event, WiMAnswerStartEvent):
            d.answer_started(event.n_relevant_margins, event.segments_read, event.n_segments)
        elif isinstance(event, WiMAnswerEvent):
            d.finished(event.result.get("timings") or {})


class WiMMarginCollector(BaseEventHandler):
    """Collects margins (and answers) as they are written, e.g. to show them next to the sources in a UI.

    `on_margin` is called with each `WiMMarginEvent` as it arrives (in the thread that consumes the run).
    """

    margins: list[WiMMarginEvent] = Field(default_factory=list)
    answers: list[WiMAnswerEvent] = Field(default_factory=list)
    only_relevant: bool = False
    on_margin: Callable[[WiMMarginEvent], None] | None = Field(default=None, exclude=True)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def class_name(cls) -> str:
        return "WiMMarginCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, WiMMarginEvent):
            if self.only_relevant and not event.relevant:
                return
            with self._lock:
                self.margins.append(event)
            if self.on_margin is not None:
                self.on_margin(event)
        elif isinstance(event, WiMAnswerEvent):
            with self._lock:
                self.answers.append(event)

    def by_node(self) -> dict[str, list[str]]:
        """node id -> texts of the margins written on it."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for m in self.margins:
                for node_id in m.node_ids:
                    out.setdefault(node_id, []).append(m.text)
        return out

    def clear(self) -> None:
        with self._lock:
            self.margins.clear()
            self.answers.clear()
