"""Ready event handlers: console progress, and a margin collector for UIs.

Register on the root dispatcher (sees every WiM event):
    from llama_index.core.instrumentation import get_dispatcher
    get_dispatcher().add_event_handler(WiMProgressHandler())
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from pydantic import Field, PrivateAttr

from .events import WiMAnswerEvent, WiMAnswerStartEvent, WiMMarginEvent, WiMSegmentReadEvent


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class WiMProgressHandler(BaseEventHandler):
    """Prints one line per WiM step: segments read, margins written (with verdict), answering, done."""

    show_margins: bool = True
    width: int = Field(100, ge=10, description="margin text is shortened to this many characters")
    stream: Any = Field(default=None, exclude=True, description="a text stream; sys.stderr when None")

    @classmethod
    def class_name(cls) -> str:
        return "WiMProgressHandler"

    def _write(self, line: str) -> None:
        out: TextIO = self.stream or sys.stderr
        out.write(line + "\n")
        out.flush()

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, WiMSegmentReadEvent):
            self._write(
                f"[wim] read part {event.segment_index + 1}/{event.n_segments} "
                f"({event.n_tokens} tokens, {len(event.node_ids)} node(s), {event.seconds:.2f}s)"
            )
        elif isinstance(event, WiMMarginEvent):
            mark = "relevant" if event.relevant else f"dropped ({event.verdict})"
            line = f"[wim] margin {event.segment_index + 1}/{event.n_segments}: {mark}"
            if self.show_margins and event.text:
                line += f" | {_short(event.text, self.width)}"
            self._write(line)
        elif isinstance(event, WiMAnswerStartEvent):
            self._write(
                f"[wim] answering from {event.n_relevant_margins} relevant margin(s) "
                f"after {event.segments_read}/{event.n_segments} part(s)"
            )
        elif isinstance(event, WiMAnswerEvent):
            seconds = (event.result.get("timings") or {}).get("total_seconds", 0.0)
            self._write(f"[wim] done in {seconds:.1f}s")


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
