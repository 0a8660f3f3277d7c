"""When each request of one WiM run on a vLLM server went out and came back: where a run's time goes.

    flock /tmp/wim-heavy.lock python benchmarks/request_timeline.py                  # starts vLLM (block size 128)
    flock /tmp/wim-heavy.lock python benchmarks/request_timeline.py --overlap        # the paper's overlap
    python benchmarks/request_timeline.py --url http://127.0.0.1:8000 --served-model smollm2

The document is benchmarks/serving.py's (8 segments of 512 tokens, the first question), read from an emptied prefix
cache where the server allows it (vLLM started here: dev mode). One line per request, in the order sent: what it was
(a warm-up, a margin or answer stream, a scoring request), its prompt tokens, and its start and end in seconds from
the run's start. Printed, not asserted (docs/benchmarks.md, "Serving engines (vLLM, CPU build)")."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]

from benchmarks.serving import cache_eraser, make_document  # noqa: E402
from wim_integrations import WiM, WiMConfig  # noqa: E402
from wim_integrations.backends.server import ServerBackend  # noqa: E402
from wim_integrations.models import ensure_default_converted  # noqa: E402


def request_kind(body: dict[str, Any], streamed: bool) -> str:
    if body.get("prompt_logprobs") is not None:
        return "score"
    if streamed:
        return "stream"
    return "warm" if body.get("max_tokens") == 1 else "post"


def timed(backend: ServerBackend) -> list[tuple[str, int, float, float]]:
    """Wrap the backend's HTTP client so every request is logged as (kind, prompt tokens, start, end)."""
    log: list[tuple[str, int, float, float]] = []
    lock = threading.Lock()
    post, stream = backend.client.post_json, backend.client.stream_events

    def record(body: dict[str, Any], streamed: bool, t0: float) -> None:
        with lock:
            log.append((request_kind(body, streamed), len(body.get("prompt") or []), t0, time.perf_counter()))

    def timed_post(path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        t0 = time.perf_counter()
        try:
            return post(path, body, headers)
        finally:
            record(body, False, t0)

    def timed_stream(path: str, body: dict[str, Any], cancel: Any, headers: Any = None) -> Iterator[Any]:
        t0 = time.perf_counter()
        try:
            yield from stream(path, body, cancel, headers)
        finally:
            record(body, True, t0)

    backend.client.post_json = timed_post  # type: ignore[method-assign]
    backend.client.stream_events = timed_stream  # type: ignore[method-assign]
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running vLLM server (default: start one here)")
    ap.add_argument("--served-model", help="with --url: the model name the server expects")
    ap.add_argument("--block-size", type=int, help="vLLM started here: --block-size")
    ap.add_argument("--overlap", action="store_true", help="WiMConfig.overlap=True")
    ap.add_argument("--segments", type=int, default=8)
    ap.add_argument("--segment-tokens", type=int, default=512)
    args = ap.parse_args()
    tokenizer = str(ensure_default_converted())
    with contextlib.ExitStack() as stack:
        if args.url:
            url, model = args.url.rstrip("/"), args.served_model
        else:
            from wim_integrations.backends.vllm_server import VLLMServer

            extra = ("--block-size", str(args.block_size)) if args.block_size else ()
            server = stack.enter_context(VLLMServer(tokenizer, dev_mode=True, max_model_len=8192, extra_args=extra))
            url, model = server.url, server.served_name
        backend = ServerBackend(url, tokenizer=tokenizer, engine="vllm", model=model)
        stack.callback(backend.close)
        cfg = WiMConfig(segment_tokens=args.segment_tokens, overlap=args.overlap or None)
        wim = WiM(backend, config=cfg)
        doc = make_document(wim, args.segments, cfg)
        with contextlib.suppress(Exception):  # a server that cannot be emptied: the run may find a warm cache
            cache_eraser(url, "vllm")()
        log = timed(backend)
        t0 = time.perf_counter()
        result = wim.run(doc.text, doc.questions[0])
        total = time.perf_counter() - t0
    tm = result.timings
    print(
        f"WiM {total:.2f} s (margins {tm.margin_seconds:.2f}, judging {tm.classify_seconds:.2f}, answer "
        f"{tm.answer_seconds:.2f}); overlap={args.overlap}; {len(log)} requests"
    )
    print("| request | prompt tokens | sent (s) | back (s) | took (s) |\n|---|---|---|---|---|")
    for kind, n, a, b in sorted(log, key=lambda e: e[2]):
        print(f"| {kind} | {n} | {a - t0:.2f} | {b - t0:.2f} | {b - a:.2f} |")


if __name__ == "__main__":
    main()
