"""WiM's cost against one plain long-context pass, on the embedded SmolLM2-135M-Instruct, as users get it.

    flock /tmp/wim-heavy.lock python benchmarks/overhead.py                  # both layouts, both stoppings (~15 min)
    python benchmarks/overhead.py --layouts 8x512 --stopping natural --no-memory   # quick look
    python benchmarks/overhead.py --backend llama.cpp --threads 2     # the same on llama.cpp in process (the GGUF)

`--backend` picks the engine the embedded model runs on: `transformers` (`WiM.default()`, the GGUF converted to
float32) or `llama.cpp` (`WiM.from_gguf` on the GGUF itself, the [llamacpp] extra); plain and WiM always run on the
same one, so each ratio compares like with like.

One generated task document (benchmarks/tasks.py: village prose with one planted code, ~3,900 tokens) is read in two
layouts: the model's default segment size (`segment_tokens=None`: 1024 tokens here, 4 segments) and 8 segments of 512
tokens. Each layout is measured under two stoppings, in the same run:

  natural  what users get: margins and answers end at the model's stop token (and at the default margin stop rule)
  forced   stop tokens ignored and margins never stopped early: every margin and answer runs to its full budget, so the
           ratio does not depend on what the model writes (WiM at its worst case)

and, per layout and stopping, these systems (each ratio against `plain` of the same layout and stopping):

  plain        chat prefix + whole context + the final-answer prompt with no margins, one prefill, then the answer
  WiM default  `WiM(backend)` with every setting at its default (segment size aside), document cache included: a
               first question on a document it has not seen
  2nd question a second, different question on the same document, on the same `WiM` (its document cache, if any)
  step-by-step the interactive loop `margin_batch_size=1` without a document cache, the baseline the defaults must
               match in results (margins and answer of greedy decoding)

Peak memory (`--no-memory` skips it) is the peak resident set size of a fresh subprocess per mode (plain; WiM default
reading the document, then answering a second question, its document cache kept), above nothing: the whole process,
the loaded model included, because a document cache stays resident after the run. Linux VmHWM reset via clear_refs;
tracemalloc does not see torch's CPU allocations.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Benchmark the checkout this script lives in, even where another copy of the package is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tasks import Task, needle_task
from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.base import GenerationRequest, overlap_view
from wim_integrations.events import AnswerToken, Finished

DOC_TOKENS = 3900
QUESTION_2 = "Who repaired the roof of the chapel, and what did the council decide?"
LAYOUTS = {"default": None, "8x512": 512}  # name -> segment_tokens (None: the model's default segment size)
STOPPINGS = ("natural", "forced")


@dataclass
class Setup:
    wim: WiM
    task: Task
    stop_ids: frozenset[int]

    def stopping(self, mode: str) -> None:
        """Natural: the model's stop tokens end generation; forced: they are ignored (full budgets)."""
        self.wim.backend.stop_ids = self.stop_ids if mode == "natural" else frozenset()  # type: ignore[attr-defined]


OVERRIDES: dict[str, str] = {}  # --set: settings tried instead of the defaults
ENGINE = {"backend": "transformers", "threads": 1}  # --backend, --threads


def config(layout: str, stopping: str, **changes: Any) -> WiMConfig:
    cfg = WiMConfig.model_validate({"segment_tokens": LAYOUTS[layout], **OVERRIDES, **changes})
    if stopping == "forced":
        cfg = cfg.with_updates(margin_stop="eos")  # no early stop rule: the full budget
    return cfg


def setup() -> Setup:
    if ENGINE["backend"] == "llama.cpp":
        from wim_integrations.models import default_gguf_path

        wim = WiM.from_gguf(default_gguf_path(), n_threads=int(ENGINE["threads"]))
    else:
        wim = WiM.default()
    task = needle_task(lambda s: len(wim.backend.encode_text(s)), DOC_TOKENS, 0.4, seed=0)
    return Setup(wim, task, frozenset(wim.backend.stop_ids))  # type: ignore[attr-defined]


def plain_long_context(wim: WiM, task: Task, cfg: WiMConfig) -> dict[str, Any]:
    """Baseline: the same prompt WiM answers from, minus the margins; one prefill, then the answer."""
    plan = wim.plan(task.context, task.question, cfg)
    b = wim.backend
    final_ids = wim.final_prompt_ids(task.question, [], plan.n_segments)
    t0 = time.perf_counter()
    cache = b.new_cache()
    b.prefill(cache, plan.full_ids)
    out, to_answer = [], None
    for tok in b.generate(cache, GenerationRequest(final_ids, cfg.answer_max_new_tokens, cfg.sampling)):
        to_answer = to_answer or time.perf_counter() - t0
        out.append(tok)
    return {
        "seconds": time.perf_counter() - t0,
        "to_answer_s": to_answer or time.perf_counter() - t0,
        "context_tokens": len(plan.full_ids),
        "segments": plan.n_segments,
        "answer_tokens": len(out),
        "answer": b.decode(out).strip(),
    }


def wim_run(wim: WiM, task: Task, cfg: WiMConfig, question: str | None = None) -> dict[str, Any]:
    first_event = to_answer = None
    t0 = time.perf_counter()
    stream = wim.stream(task.context, question or task.question, config=cfg)
    for event in stream:
        if first_event is None:
            first_event = time.perf_counter() - t0
        if to_answer is None and isinstance(event, (AnswerToken, Finished)):
            to_answer = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    r = stream.result
    assert r is not None
    return {
        "seconds": seconds,
        "first_event_s": first_event,
        "to_answer_s": to_answer,
        "cache": r.timings.context_cache,
        "margin_tokens": [m.n_tokens for m in r.margins],
        "kept": [m.relevant for m in r.margins],
        "margins": [m.text for m in r.margins],
        "answer_tokens": r.tokens.answer_generated,
        "answer": r.answer,
        "margin_s": r.timings.margin_seconds,
        "classify_s": r.timings.classify_seconds,
        "prefill_s": r.timings.prefill_seconds,
        "answer_s": r.timings.answer_seconds,
    }


def measure(s: Setup, layout: str, stopping: str) -> dict[str, Any]:
    s.stopping(stopping)
    cfg = config(layout, stopping)
    plain = plain_long_context(s.wim, s.task, cfg)
    fresh = s.wim.with_options(document_cache="auto")  # a new WiM on the loaded model: its own, empty, document cache
    first = wim_run(fresh, s.task, cfg)
    second = wim_run(fresh, s.task, cfg, QUESTION_2)
    step = wim_run(s.wim.with_options(document_cache=None), s.task, cfg.with_updates(margin_batch_size=1))
    over = None  # the paper's overlap, where the engine has it: a first question as `first`, its own document cache
    if overlap_view(s.wim.backend) is not None:
        over = wim_run(s.wim.with_options(document_cache="auto"), s.task, cfg.with_updates(overlap=True))
    m = {"layout": layout, "stopping": stopping, "plain": plain, "wim": first, "second": second, "step": step}
    return m | {"overlap": over}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(mode: str, layout: str) -> None:
    """One memory measurement in a fresh process: peak RSS of the whole process while it runs `mode`."""
    s = setup()
    cfg = config(layout, "natural")
    warm = cfg.with_updates(margin_max_new_tokens=2, answer_max_new_tokens=2)
    small = needle_task(lambda t: len(s.wim.backend.encode_text(t)), 300, 0.5, seed=1)
    s.wim.with_options(document_cache=None).run(small.context, small.question, config=warm)  # allocator pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kib("VmRSS")
    if mode == "plain":
        plain_long_context(s.wim, s.task, cfg)
    else:
        wim = s.wim.with_options(document_cache="auto")
        wim.run(s.task.context, s.task.question, config=cfg)
        wim.run(s.task.context, QUESTION_2, config=cfg)
    print(
        json.dumps(
            {"base_mib": base / 1024, "peak_mib": _rss_kib("VmHWM") / 1024, "after_mib": _rss_kib("VmRSS") / 1024}
        )
    )


def measure_memory(layout: str, threads: int) -> dict[str, dict[str, float]]:
    out = {}
    for mode in ("plain", "wim"):
        cmd = [sys.executable, __file__, "--child", mode, "--layouts", layout, "--threads", str(threads)]
        cmd += ["--backend", str(ENGINE["backend"])]
        cmd += ["--set", *(f"{k}={v}" for k, v in OVERRIDES.items())] if OVERRIDES else []
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _row(m: dict[str, Any]) -> str:
    p, w, s2, st = m["plain"], m["wim"], m["second"], m["step"]
    mt = w["margin_tokens"]
    same = w["margins"] == st["margins"] and w["answer"] == st["answer"]
    return (
        f"| {m['layout']} ({p['segments']}) | {m['stopping']} | {p['seconds']:.1f} | {w['seconds']:.1f} "
        f"(**{w['seconds'] / p['seconds']:.2f}x**) | {p['to_answer_s']:.1f} / {w['to_answer_s']:.1f} "
        f"(**{w['to_answer_s'] / p['to_answer_s']:.2f}x**) | {s2['seconds']:.1f} "
        f"(**{s2['seconds'] / w['seconds']:.2f}** of 1st) | {st['seconds']:.1f} "
        f"({st['seconds'] / p['seconds']:.2f}x) | "
        f"{w['first_event_s']:.1f} / {st['first_event_s']:.1f} | {sum(mt) / len(mt):.1f} (max {max(mt)}) | "
        f"{p['answer_tokens']} / {w['answer_tokens']} | {'yes' if same else 'NO'} | {_overlap_cell(m)} |"
    )


def _overlap_cell(m: dict[str, Any]) -> str:
    o, p, w = m.get("overlap"), m["plain"], m["wim"]
    if o is None:
        return "–"
    same = o["margins"] == w["margins"] and o["answer"] == w["answer"]
    return (
        f"{o['seconds']:.1f} ({o['seconds'] / p['seconds']:.2f}x) / {o['to_answer_s']:.1f} "
        f"(**{o['to_answer_s'] / p['to_answer_s']:.2f}x**); same as default: {'yes' if same else 'NO'}"
    )


def _phases(m: dict[str, Any]) -> str:
    """Where WiM's time went, per system: prefill (the reading; with overlap the margins riding along), margins,
    judging, answer."""
    cells = []
    for name in ("wim", "overlap", "step"):
        r = m.get(name)
        if r is not None:
            cells.append(
                f"{name}: prefill {r['prefill_s']:.1f} / margins {r['margin_s']:.1f} / judging {r['classify_s']:.1f}"
                f" / answer {r['answer_s']:.1f}"
            )
    return f"  phases s, {m['layout']} {m['stopping']}: " + "; ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    ap.add_argument("--stopping", nargs="+", choices=STOPPINGS, default=list(STOPPINGS))
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch or llama.cpp threads (1: on a shared small CPU, more are slower)"
    )
    ap.add_argument("--backend", choices=["transformers", "llama.cpp"], default="transformers", help="the engine")
    ap.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="WiMConfig settings to try")
    ap.add_argument("--child", choices=["plain", "wim"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    ENGINE.update(backend=args.backend, threads=args.threads)
    if args.backend == "transformers":
        import torch

        torch.set_num_threads(args.threads)
    OVERRIDES.update(item.split("=", 1) for item in args.set)
    if args.child:
        child(args.child, args.layouts[0])
        return

    s = setup()
    defaults = WiMConfig.model_validate(OVERRIDES)
    cache_kind = type(s.wim.with_options(document_cache="auto").document_cache).__name__
    engine = f"{args.backend} ({type(s.wim.backend).__name__})"
    print(
        f"# {engine}, {args.threads} threads, model {s.wim.model_name}; task "
        f"{s.task.id} ({s.task.n_tokens} tokens); WiM defaults: {defaults.model_dump(exclude={'sampling'})}, "
        f"document cache {cache_kind}"
    )
    warm = WiMConfig(margin_max_new_tokens=2, answer_max_new_tokens=2)
    small = needle_task(lambda t: len(s.wim.backend.encode_text(t)), 300, 0.5, seed=1)
    s.wim.with_options(document_cache=None).run(small.context, small.question, config=warm)  # warm-up
    print(
        "\n| layout (segments) | stopping | plain s | WiM default s (x plain) | to first answer token s: plain / WiM "
        "(x plain) | 2nd question s (x 1st) | step-by-step s (x plain) | first event s: default / step | "
        "margin tokens (mean) | answer tokens plain / WiM | same results as step-by-step | overlap s (x plain) / "
        "to first answer token s (x plain) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    for layout in args.layouts:
        for stopping in args.stopping:
            m = measure(s, layout, stopping)
            results.append(m)
            print(_row(m), flush=True)
    for m in results:
        print(_phases(m))
    if not args.no_memory:
        for layout in args.layouts:
            mem = measure_memory(layout, args.threads)
            p, w = mem["plain"], mem["wim"]
            print(
                f"\nPeak RSS, {layout} layout, natural stopping: plain {p['peak_mib']:.0f} MiB, WiM default (two "
                f"questions, document cache kept: {w['after_mib']:.0f} MiB after) {w['peak_mib']:.0f} MiB = "
                f"**{w['peak_mib'] / p['peak_mib']:.3f}x** plain (loaded model and warm-up: {p['base_mib']:.0f} MiB)",
                flush=True,
            )
            results.append({"layout": layout, "memory": mem})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
