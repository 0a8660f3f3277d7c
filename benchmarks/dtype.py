"""Prefill and decode speed of the embedded SmolLM2-135M-Instruct per dtype, on this machine's CPU.

    flock /tmp/wim-heavy.lock python benchmarks/dtype.py            # float32, bfloat16, float16
    python benchmarks/dtype.py --tokens 512 --new 32 --repeats 1    # quick look

The numbers behind `dtype="auto"`'s CPU fallback in models.py (see docs/architecture.md, "Loading models"). The same
weights are cast to each dtype; prefill = one forward over `--tokens` context tokens into a fresh cache, decode = tokens
per second over `--new` greedy steps on top of it (stop tokens ignored). Best of `--repeats` runs, after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from wim_integrations.backends.hf import HFBackend
from wim_integrations.models import ensure_default_converted, load_model_and_tokenizer


def measure(backend: HFBackend, ids: list[int], new: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens per second)."""
    cache = backend.new_cache()
    t0 = time.perf_counter()
    backend.prefill(cache, ids)
    prefill = time.perf_counter() - t0
    token = ids[-1]
    t0 = time.perf_counter()
    for _ in range(new):
        logits = backend._forward(cache, [token])
        token = int(logits.argmax(-1))
    return prefill, new / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--tokens", type=int, default=1024, help="context tokens to prefill (default 1024)")
    parser.add_argument("--new", type=int, default=64, help="tokens to decode (default 64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    path = ensure_default_converted()
    rows = []
    for name in args.dtypes:
        model, tokenizer = load_model_and_tokenizer(path, dtype=getattr(torch, name))
        backend = HFBackend(model, tokenizer)
        text = "The harbour log notes the tide, the boats and the weather of each day. " * 200
        ids = backend.encode_text(text)[: args.tokens]
        measure(backend, ids[:64], 4)  # warm-up
        runs = [measure(backend, ids, args.new) for _ in range(args.repeats)]
        row = {
            "dtype": name,
            "prefill_tokens": len(ids),
            "prefill_seconds": round(min(r[0] for r in runs), 3),
            "decode_tokens_per_second": round(max(r[1] for r in runs), 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or "?"})
    )
    return rows


if __name__ == "__main__":
    main()
