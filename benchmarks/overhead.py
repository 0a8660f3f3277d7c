"""WiM's overhead against one plain long-context pass, on the embedded SmolLM2-135M-Instruct.

    flock /tmp/wim-heavy.lock python benchmarks/overhead.py   # 4, 8, 16 segments (about 10 min on 1 busy CPU core)
    python benchmarks/overhead.py --segments 4 --no-memory    # quick look

Every ratio is measured in the same run against the baseline of that run: plain long-context generation with the same
model and code (chat prefix + whole context + the final-answer prompt with no margins, then the answer budget).
Stop tokens are ignored so every margin and answer uses its whole budget: timings do not depend on what the model
happens to write, and WiM is measured at its worst case. Peak memory is measured in separate subprocesses (one per
mode) as the peak resident set size of the run, after the model is loaded (Linux VmHWM reset via clear_refs), because
tracemalloc does not see torch's CPU allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Benchmark the checkout this script lives in, even where another copy of the package is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.base import GenerationRequest
from wim_integrations.doc_cache import DocumentCache

CITIES = ["Oslo", "Lima", "Perth", "Quito", "Turin", "Dakar", "Hanoi", "Cork", "Porto", "Omsk", "Riga", "Bern"]
GOODS = ["copper wire", "coffee beans", "wool blankets", "glass jars", "rice sacks", "bicycle tyres", "olive oil"]
QUESTION = "How many crates of lemons were stored in the warehouse in Bern?"
QUESTION_2 = "Which city received the coffee beans?"


def make_document(wim: WiM, n_segments: int, cfg: WiMConfig) -> str:
    """Deterministic logistics notes, as many sentences as fit in `n_segments` segments; one planted fact."""
    sentences = []
    for i in range(n_segments * cfg.segment_tokens // 20):
        city, good = CITIES[i % len(CITIES)], GOODS[(i * 5) % len(GOODS)]
        sentences.append(
            f"On day {i + 1} the depot in {city} shipped {(i * 37) % 400 + 20} crates of {good} by truck number "
            f"{(i * 13) % 90 + 10}, and the clerk noted that the loading took {(i * 7) % 50 + 5} minutes."
        )
    sentences.insert(len(sentences) // 3, "The warehouse in Bern stored exactly 742 crates of lemons that winter.")

    def segments(k: int) -> int:
        return wim.plan(" ".join(sentences[:k]), QUESTION, cfg).n_segments

    lo, hi = 1, len(sentences)  # largest k with segments(k) <= n_segments
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if segments(mid) <= n_segments else (lo, mid - 1)
    if segments(lo) != n_segments:
        raise RuntimeError(f"could not build a document of {n_segments} segments")
    return " ".join(sentences[:lo])


def plain_long_context(wim: WiM, document: str, cfg: WiMConfig) -> dict[str, float]:
    """Baseline: the same prompt WiM answers from, minus the margins; one prefill, then the answer budget."""
    plan = wim.plan(document, QUESTION, cfg)
    b = wim.backend
    context_ids = plan.full_ids
    final_ids = wim.final_prompt_ids(QUESTION, [], plan.n_segments)
    t0 = time.perf_counter()
    cache = b.new_cache()
    b.prefill(cache, context_ids)
    t1 = time.perf_counter()
    out = list(b.generate(cache, GenerationRequest(final_ids, cfg.answer_max_new_tokens, cfg.sampling)))
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "prefill_tok_s": len(context_ids) / (t1 - t0),
        "decode_tok_s": len(out) / (t2 - t1),
        "context_tokens": len(context_ids),
        "answer_tokens": len(out),
    }


def wim_run(wim: WiM, document: str, cfg: WiMConfig, question: str = QUESTION) -> dict[str, float]:
    t0 = time.perf_counter()
    r = wim.run(document, question, config=cfg)
    seconds = time.perf_counter() - t0
    t = r.timings
    return {
        "seconds": seconds,
        "prefill_tok_s": (r.tokens.context / t.prefill_seconds) if t.prefill_seconds > 0.05 else float("nan"),
        "margin_tok_s": r.tokens.margin_generated / t.margin_seconds,
        "margins": len(r.margins),
        "margin_tokens": r.tokens.margin_generated,
        "cache": t.context_cache,
        "answer": r.answer,
    }


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, n_segments: int, cfg: WiMConfig) -> None:
    """One measurement in a fresh process: peak RSS of the run above the loaded model's RSS."""
    wim = _load()
    document = make_document(wim, n_segments, cfg)
    small = cfg.with_updates(margin_max_new_tokens=2, answer_max_new_tokens=2)
    wim.run(make_document(wim, 1, small), QUESTION, config=small)  # warm-up: allocator pools, lazy imports
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kib("VmRSS")
    if mode == "plain":
        plain_long_context(wim, document, cfg)
    else:
        wim_run(wim, document, cfg.with_updates(margin_batch_size=n_segments if mode == "batched" else 1))
    print(json.dumps({"base_mib": base / 1024, "peak_mib": _rss_kib("VmHWM") / 1024}))


def _load() -> WiM:
    wim = WiM.default()
    wim.backend.stop_ids = frozenset()  # full budgets: see the module docstring
    return wim


def measure_memory(n_segments: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("plain", "sequential", "batched"):
        cmd = [sys.executable, __file__, "--child", mode, "--segments", str(n_segments)]
        cmd += ["--segment-tokens", str(args.segment_tokens), "--margin-tokens", str(args.margin_tokens)]
        cmd += ["--answer-tokens", str(args.answer_tokens), "--threads", str(args.threads)]
        cmd += ["--classification", args.classification]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--margin-tokens", type=int, default=16)
    ap.add_argument("--answer-tokens", type=int, default=16)
    ap.add_argument("--group", type=int, default=4, help="small-group batch size measured at 8 segments")
    ap.add_argument("--memory-segments", type=int, default=4)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared small CPU, more threads are slower)"
    )
    ap.add_argument(
        "--classification", choices=["same_model", "inline", "none"], default="same_model", help="margin judging mode"
    )
    ap.add_argument("--child", choices=["plain", "sequential", "batched"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = WiMConfig(
        segment_tokens=args.segment_tokens,
        margin_max_new_tokens=args.margin_tokens,
        answer_max_new_tokens=args.answer_tokens,
        classification=args.classification,
    )
    if args.child:
        child(args.child, args.segments[0], cfg)
        return

    wim = _load()
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, model {wim.model_name}; segments of "
        f"{args.segment_tokens} tokens, margins {args.margin_tokens} tokens, answer {args.answer_tokens} tokens, "
        f"classification {args.classification}, greedy, stop tokens ignored"
    )
    warm = cfg.with_updates(margin_max_new_tokens=2, answer_max_new_tokens=2)
    wim.run(make_document(wim, 1, warm), QUESTION, config=warm)  # warm-up
    if not args.no_memory:
        report_memory(args)
    print()
    print(
        "| segments | context tokens | plain s | WiM sequential s (x plain) | WiM batched s (x plain) | "
        "2nd question / 1st | plain prefill tok/s | plain decode tok/s | sequential margin tok/s | "
        "batched margin tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    notes = []
    for n in args.segments:
        doc = make_document(wim, n, cfg)
        plain = plain_long_context(wim, doc, cfg)
        seq = wim_run(wim, doc, cfg)
        assert seq["margins"] == n, f"document has {seq['margins']} segments, wanted {n}"
        bat = wim_run(wim, doc, cfg.with_updates(margin_batch_size=n))
        cached = WiM(wim.backend, config=cfg, document_cache=DocumentCache())
        first = wim_run(cached, doc, cfg.with_updates(margin_batch_size=n))
        second = wim_run(cached, doc, cfg.with_updates(margin_batch_size=n), QUESTION_2)
        assert (first["cache"], second["cache"]) == ("miss", "hit")
        print(
            f"| {n} | {plain['context_tokens']} | {plain['seconds']:.1f} | {seq['seconds']:.1f} "
            f"({seq['seconds'] / plain['seconds']:.2f}x) | {bat['seconds']:.1f} "
            f"({bat['seconds'] / plain['seconds']:.2f}x)"
            f" | {second['seconds']:.1f}/{first['seconds']:.1f} = {second['seconds'] / first['seconds']:.2f} | "
            f"{plain['prefill_tok_s']:.0f} | {plain['decode_tok_s']:.1f} | {seq['margin_tok_s']:.1f} | "
            f"{bat['margin_tok_s']:.1f} |",
            flush=True,
        )
        if n == 8:
            group = wim_run(wim, doc, cfg.with_updates(margin_batch_size=args.group))
            notes.append(
                f"At {n} segments, margins batched in groups of {args.group} (events stream group by group): "
                f"{group['seconds']:.1f}s ({group['seconds'] / plain['seconds']:.2f}x plain)"
            )
    for note in notes:
        print("\n" + note)


def report_memory(args: argparse.Namespace) -> None:
    n = args.memory_segments
    mem = measure_memory(n, args)
    p = mem["plain"]["peak_mib"] - mem["plain"]["base_mib"]
    print(f"\nPeak RSS at {n} segments (separate processes; model loaded = {mem['plain']['base_mib']:.0f} MiB):")
    print("| mode | peak RSS MiB | run's extra over loaded model MiB | peak / plain peak |")
    print("|---|---|---|---|")
    for mode, m in mem.items():
        extra = m["peak_mib"] - m["base_mib"]
        print(
            f"| {mode} | {m['peak_mib']:.0f} | {extra:.0f} ({extra / p:.2f}x plain) | "
            f"{m['peak_mib'] / mem['plain']['peak_mib']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
