"""A soak: 500 mixed runs on one process (plain, threaded, async, cancelled, answered early, bad input, and runs
through a fake vLLM behind a fault proxy that answers 503, cuts streams and stalls). Memory, open files and threads
are sampled as it goes and must stay flat: nothing a run leaves behind accumulates."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_engines import FakeVLLM
from fault_proxy import FaultProxy

from wim_integrations import WiM, WiMConfig, WiMError, WiMInputError
from wim_integrations.backends.server import ServerBackend
from wim_integrations.events import MarginWritten

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from fake_backend import FakeBackend

pytestmark = pytest.mark.slow

RUNS = 500
WARM_UP = 100  # the first runs fill caches and pools that are meant to stay (the document cache, thread pools)
TEXT = ("The keeper of the light is Ines Marlowe. The harbor counted 112 boats this year. " * 36).strip()
QUESTIONS = ["Who keeps the light?", "How many boats?", "What is the harbor?"]
# The fake backend has a token per character: its margin prompt is ~450 tokens, so segments of 1200 (3 of them).
CFG = WiMConfig(segment_tokens=1200, margin_max_new_tokens=6, answer_max_new_tokens=6, margin_batch_size=2)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _cancel_midway(wim: WiM, question: str) -> None:
    stream = wim.stream(TEXT, question)
    for i, _ in enumerate(stream):
        if i == 3:
            stream.cancel()
    assert stream.result is None


def _answer_early(wim: WiM, question: str) -> None:
    stream = wim.stream(TEXT, question)
    for event in stream:
        if isinstance(event, MarginWritten):
            stream.answer_now()
    assert stream.result is not None and stream.result.answer is not None


def test_500_mixed_runs_leave_memory_files_and_threads_flat(tiny_backends):
    wim = WiM(FakeBackend(), config=CFG)
    tokenizer = tiny_backends["llama"].tokenizer
    samples: list[tuple[int, int, int, int]] = []
    outcomes: dict[str, int] = {}
    with (
        FakeVLLM(tokenizer) as engine,
        FaultProxy(engine.url) as proxy,
        ThreadPoolExecutor(3) as pool,
    ):
        backend = ServerBackend(proxy.url, tokenizer=tokenizer, engine="vllm", max_retries=1, timeout=2.0)
        backend.client.backoff = 0.01
        served = WiM(backend, config=CFG.with_updates(segment_tokens=400))
        served_text = " ".join(["The keeper of the light is Ines Marlowe."] * 20)

        def served_run(i: int) -> str:
            faults = [("status", 503)], [("forward", None), ("cut", 2)], [("stall", 2.5)], []
            proxy.script(*faults[(i // len(kinds)) % 4])  # each fault in turn, one server run in four
            # The fakes' own records of every request (and the fake engine's prefix store) would grow the RSS
            # measured here: they are the test's, not the library's.
            engine.requests.clear()
            engine._prompts.clear()
            proxy.paths.clear()
            try:
                served.run(served_text, QUESTIONS[i % 3])
                return "server ok"
            except WiMError as e:  # a cut stream or a stall past the timeout: a typed error, never a hang
                return f"server {type(e).__name__}"

        kinds = [
            lambda i: wim.run(TEXT, QUESTIONS[i % 3]) and "run",
            lambda i: list(pool.map(lambda q: wim.run(TEXT, q), QUESTIONS)) and "threads",
            lambda i: asyncio.run(wim.arun(TEXT, QUESTIONS[i % 3])) and "async",
            lambda i: _cancel_midway(wim, QUESTIONS[i % 3]) or "cancel",
            lambda i: _answer_early(wim, QUESTIONS[i % 3]) or "answer_now",
            served_run,
        ]
        for i in range(RUNS):
            if i % 50 == 49:
                with pytest.raises(WiMInputError):
                    wim.run("bad \ud800 text", QUESTIONS[0])
                outcome = "bad input"
            else:
                outcome = kinds[i % len(kinds)](i)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if i % 50 == 0 or i == RUNS - 1:
                time.sleep(1.0)  # a stalled request's proxy thread finishes its sleep
                gc.collect()
                samples.append((i, _rss_kib(), _open_files(), threading.active_count()))
        backend.close()

    print("outcomes:", outcomes)
    print("run, RSS KiB, open files, threads:", *samples, sep="\n  ")
    assert sum(outcomes.values()) == RUNS
    assert {"server ok", "server ServerTimeoutError"} <= set(outcomes), outcomes  # the faults did happen
    settled = [s for s in samples if s[0] >= WARM_UP]
    first, last = settled[0], settled[-1]
    assert last[1] - first[1] < 20 * 1024, f"RSS grew {last[1] - first[1]} KiB over {last[0] - first[0]} runs"
    assert max(s[2] for s in settled) - first[2] <= 2, samples  # open files
    assert max(s[3] for s in settled) - first[3] <= 1, samples  # threads
