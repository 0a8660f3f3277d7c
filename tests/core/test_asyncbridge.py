"""The one thread-to-async bridge (asyncbridge.py): order, contextvars, and closing on every way out."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest

from wim_integrations.reading.asyncbridge import aiter_in_thread

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


class Items:
    """An iterator that records the threads it ran in, the context it saw, and whether it was closed."""

    def __init__(self, n: int, gate: threading.Event | None = None) -> None:
        self.n, self.gate, self.i = n, gate, 0
        self.seen: list[tuple[str, str]] = []
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.gate is not None and self.i == 1:
            self.gate.wait(5)
        if self.i == self.n:
            raise StopIteration
        self.seen.append((threading.current_thread().name, VAR.get()))
        self.i += 1
        return self.i

    def close(self) -> None:
        assert not self.closed
        self.closed = True


def test_items_in_order_in_a_worker_with_the_context_copied():
    items, cancelled = Items(3), []

    async def main() -> list[int]:
        VAR.set("mine")
        return [x async for x in aiter_in_thread(items, lambda: cancelled.append(True))]

    assert asyncio.run(main()) == [1, 2, 3]
    assert all(thread != threading.main_thread().name and var == "mine" for thread, var in items.seen)
    assert items.closed and cancelled == [True]


def test_a_cancelled_consumer_closes_the_iterator_after_the_step_in_flight():
    gate = threading.Event()
    items = Items(5, gate)

    async def main() -> None:
        async def consume() -> None:
            async for _ in aiter_in_thread(items):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)  # the second step is running in the worker, held at the gate
        task.cancel()
        await asyncio.sleep(0.05)
        assert not items.closed  # not while the step runs in the worker
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert items.closed and items.i == 2


def test_breaking_out_closes_at_once():
    items = Items(5)

    async def main() -> None:
        gen = aiter_in_thread(items)
        async for x in gen:
            if x == 2:
                break
        await gen.aclose()

    asyncio.run(main())
    assert items.closed and items.i == 2
