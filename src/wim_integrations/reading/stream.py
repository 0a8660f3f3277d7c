"""`WiMStream`: one run as an iterator of events, with early exit, and its async form."""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Generator, Iterator

from ..errors import WiMCancelled
from ..events import WiMEvent
from ..results import WiMResult
from .asyncbridge import aiter_in_thread
from .loop import Controls, Run
from .plan import Plan
from .reader import Reader


class WiMStream:
    """Iterator of a run's events, with early exit.

    `answer_now()`: stop reading further segments and answer from what was read so far (events continue with
    the answer). `cancel()`: stop at the next step; no answer, no `Finished`. `result` is set after `Finished`.
    """

    def __init__(self, reader: Reader, plan: Plan) -> None:
        self.reader = reader
        self.plan = plan
        self._answer_now = threading.Event()
        self._cancel = threading.Event()
        self._run = Run(reader, plan, Controls(self._answer_now.is_set, self._check_cancel, self._cancel.is_set))
        self._events = self._drive()

    @property
    def model_name(self) -> str:
        return self.reader.backend.name

    @property
    def result(self) -> WiMResult | None:
        return self._run.result

    def answer_now(self) -> None:
        self._answer_now.set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[WiMEvent]:
        return self

    def __next__(self) -> WiMEvent:
        return next(self._events)

    def close(self) -> None:
        self._cancel.set()
        self._events.close()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise WiMCancelled()

    def _drive(self) -> Generator[WiMEvent, None, None]:
        try:
            yield from self._run.events()
        except WiMCancelled:
            return

    def aiter(self) -> AsyncGenerator[WiMEvent, None]:
        """Drive this stream from a worker thread, one event at a time; cancelling the task cancels the run."""
        return aiter_in_thread(self._events, self.cancel)
