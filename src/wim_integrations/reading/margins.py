"""The margins-only run: a stream read up to its answer, which is never decoded.

`WiMStream` yields `AnswerStarted` before the answer's first forward pass (the answer prompt is built, nothing is
computed on it); closing the stream there ends the run with every margin written and no answer token decoded. Used
by `WiM.read_margins` and by the document filters (`WiMDocumentCompressor`, `WiMNodePostprocessor`), which plan the
stream themselves so that their traces can show the run's settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..events import AnswerStarted, Margin, MarginWritten, WiMEvent

if TYPE_CHECKING:
    from .stream import WiMStream

OnEvent = Callable[[WiMEvent], Any]
AsyncOnEvent = Callable[[WiMEvent], Awaitable[Any] | Any]


def read_until_answer(stream: WiMStream, on_event: OnEvent | None = None) -> list[Margin]:
    """The stream's margins, in order; `on_event` sees every event before `AnswerStarted`. The stream is closed on
    the way out (after its margins, or on an error)."""
    margins: list[Margin] = []
    try:
        for event in stream:
            if isinstance(event, AnswerStarted):
                break
            if on_event is not None:
                on_event(event)
            if isinstance(event, MarginWritten):
                margins.append(event.margin)
    finally:
        stream.close()  # at AnswerStarted: the answer is never decoded
    return margins


async def aread_until_answer(stream: WiMStream, on_event: AsyncOnEvent | None = None) -> list[Margin]:
    """`read_until_answer` with each step in a worker thread; `on_event` may be a coroutine function."""
    margins: list[Margin] = []
    events = stream.aiter()
    try:
        async for event in events:
            if isinstance(event, AnswerStarted):
                break
            if on_event is not None and inspect.isawaitable(seen := on_event(event)):
                await seen
            if isinstance(event, MarginWritten):
                margins.append(event.margin)
    finally:
        await events.aclose()  # closes the stream once no step is running in the worker
    return margins
