"""Timing the run's phases: one helper instead of a `perf_counter` pair at every step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Lap:
    seconds: float = 0.0


@contextmanager
def lap() -> Iterator[Lap]:
    """`with lap() as t: ...` then `t.seconds`: the block's wall time (set even when it raises)."""
    t, start = Lap(), time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - start
