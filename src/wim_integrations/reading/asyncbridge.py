"""The one thread-to-async bridge: a synchronous iterator driven from a worker thread, one item at a time.

Used by `WiMStream.aiter` (a run's events) and by the LlamaIndex LLM's async streams (generated text), so the event
loop stays free while the model computes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


async def aiter_in_thread(
    iterator: Iterator[T], on_cancel: Callable[[], object] | None = None
) -> AsyncGenerator[T, None]:
    """Each `next(iterator)` in the default executor, with the consumer's contextvars copied (tracing spans, callback
    managers). When the consumer is done (exhausted, `break`, `aclose()`, a cancelled task) `on_cancel` is called (a
    run told to stop at its next step), then the iterator is closed: at once, or, when a step is still executing in
    the worker, as soon as that step returns (closing a generator running in another thread would raise), even if the
    consumer is cancelled again meanwhile."""
    done: Any = object()
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[Any] | None = None
    close: Callable[[], object] = getattr(iterator, "close", lambda: None)
    try:
        while True:
            # A plain executor future, not a task: `asyncio.run` cancels every pending task at shutdown, and a
            # cancelled `to_thread` task looks done while its thread is still inside the iterator.
            step = functools.partial(contextvars.copy_context().run, next, iterator, done)
            pending = loop.run_in_executor(None, step)
            item = await asyncio.shield(pending)
            pending = None
            if item is done:
                return
            yield item
    finally:
        if on_cancel is not None:
            on_cancel()
        if pending is None or pending.done():
            close()
        else:
            pending.add_done_callback(lambda _: close())
            await asyncio.wait([pending])
