"""Keep rules for the document filters, compared offline on per-piece scores of the retrieval tasks (issue 26).

    python -m benchmarks.retrieval_rules lift --ks 4 8 16 --seeds 20 --out lift.jsonl   # question lift per piece
    python -m benchmarks.retrieval_rules rules FILE --field lift --fit 0 10 --held-out 10 20
    python -m benchmarks.retrieval_rules rules RESULTS.jsonl --field compressor --fit 0 5 --held-out 5 10
    python -m benchmarks.retrieval_rules hops RESULTS.jsonl --out hops.jsonl      # evidence lifts after the margins
    python -m benchmarks.retrieval_rules hop-rules hops.jsonl --fit 0 5 --held-out 5 10
    python -m benchmarks.retrieval_rules hop-answers hops.jsonl --hop-threshold T --out RESULTS.jsonl

Two per-piece scores, on the tasks of `benchmarks/retrieval.py`:

- `compressor`: what `WiMDocumentCompressor` judges by, each piece's best margin score (`segment_pmi`), from the
  `piece_scores` of its records in a results file;
- `lift`: a question-aware score that needs no margin: how much the piece, read alone, raises the question's
  likelihood, mean log P(question | piece) - mean log P(question | nothing) over the question's tokens (the
  unsupervised passage re-ranking of Sachan et al., 2022, as a filter score).

`hops` replays the second hop (`filtering.follow_hops`, hops=2) on the compressor's records of a results file: the
margins' pass is deterministic (greedy), so the pieces it kept are the record's `kept`, and only the hop pass runs:
each piece the margins dropped gets its evidence lift given the kept ones. `hop-rules` compares hop thresholds on
those lifts (exact offline for hops=2), `hop-answers` runs the plain reader on what a threshold keeps and appends
`compressor_hops` records (filter seconds: the record's margins read plus the hop pass, timed in different runs;
`--system compressor --hop-threshold 1e9` answers from the margins' pieces alone, the hops=1 filter).

Each rule (absolute threshold, within a margin of the best piece, a share of the best, mean + c std, top-n) is
reported on the fit seeds and the held-out seeds: share of tasks whose holding pieces were all kept, and the share of
pieces kept, per k and kind. Rules are chosen on the fit seeds only; the held-out rows are what to believe.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from wim_integrations.backends.base import Backend
from wim_integrations.events import DocumentSpan, Margin
from wim_integrations.filtering import DocumentJudgement, follow_hops

from .retrieval import KINDS, _answer, make_task
from .scoring import mentions

Rule = Callable[[Sequence[float]], set[int]]


def question_lift(backend: Backend, pieces: Sequence[str], question: str) -> list[float]:
    """Per piece: mean log P(question tokens | chat prefix, piece) - the same with no piece, in one scoring pass."""
    head = backend.encode_template(backend.chat_frame().prefix)
    label, q = backend.encode_text("\n\nQuestion:"), backend.encode_text(" " + question)
    cache = backend.new_cache()
    backend.prefill(cache, head)
    rows = [[*backend.encode_text(p), *label, *q] for p in pieces] + [[*label, *q]]
    scores = backend.score_rows(cache, rows, tails=[len(q)] * len(rows))
    *per_piece, alone = (mean(s.token_logprobs[-len(q) :]) for s in scores)
    return [v - alone for v in per_piece]


def rules() -> Iterator[tuple[str, Rule]]:
    def top(n: int) -> Rule:
        return lambda s: set(sorted(range(len(s)), key=lambda i: -s[i])[:n])

    def at_least(t: float) -> Rule:
        return lambda s: {i for i, v in enumerate(s) if v >= t}

    def within(d: float) -> Rule:
        return lambda s: {i for i, v in enumerate(s) if v >= max(s) - d}

    def share(r: float) -> Rule:
        return lambda s: {i for i, v in enumerate(s) if v >= r * max(s)}

    def above_mean(c: float) -> Rule:
        return lambda s: {i for i, v in enumerate(s) if v >= statistics.mean(s) + c * statistics.pstdev(s)}

    for n in (1, 2, 3):
        yield f"top {n}", top(n)
    for t in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5):
        yield f">= {t}", at_least(t)
    for d in (0.25, 0.5, 1.0, 1.5):
        yield f">= best - {d}", within(d)
    for r in (0.05, 0.1, 0.2, 0.3):
        yield f">= {r} x best", share(r)
    for c in (0.0, 0.5, 1.0):
        yield f">= mean + {c} sd", above_mean(c)


Cells = dict[tuple[Any, str], tuple[float, float, int]]  # (k, kind) -> all holding kept, share kept, tasks


def evaluate(tasks: Sequence[dict[str, Any]], rule: Rule) -> Cells:
    """(all holding kept, share kept, tasks) per (k, kind), k and kind also pooled as "all"."""
    cells: dict[tuple[Any, str], list[tuple[bool, float]]] = {}
    for t in tasks:
        kept = rule(t["scores"])
        row = (all(i in kept for i in t["holding"]), len(kept) / len(t["scores"]))
        for key in ((t["k"], t["kind"]), (t["k"], "all"), ("all", t["kind"]), ("all", "all")):
            cells.setdefault(key, []).append(row)
    return {key: (mean(a for a, _ in v), mean(b for _, b in v), len(v)) for key, v in cells.items()}


def load(path: Path, field: str, seeds: range) -> list[dict[str, Any]]:
    tasks = []
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.strip() else None
        if r is None or r.get("seed", int(r["task"].rsplit("-s", 1)[1])) not in seeds:
            continue
        if field == "lift" and "lift" in r:
            scores = r["lift"]
        elif r.get("system") == field and r.get("piece_scores") is not None:
            scores = [v if v is not None else -1e9 for v in r["piece_scores"]]
        else:
            continue
        tasks.append({"k": r["k"], "kind": r["kind"], "holding": r["holding"], "scores": scores})
    return tasks


def _fit_held_table(
    title: str,
    column: str,
    fit: Sequence[dict[str, Any]],
    held: Sequence[dict[str, Any]],
    rows: Sequence[tuple[str, Cells, Cells]],
) -> str:
    """One row per (name, fit cells, held-out cells): all holding kept / share kept, per (k, kind) and pooled."""
    keys = [*sorted({(t["k"], t["kind"]) for t in [*fit, *held]}), ("all", "all")]
    head = " | ".join(f"k {k} {kind}" if k != "all" else "all" for k, kind in keys)
    lines = [title, f"| {column} | {head} |", "|---|" + "---|" * len(keys)]
    for name, a, b in rows:
        cells = []
        for key in keys:
            fa, fb, _ = a.get(key, (float("nan"),) * 3)
            ha, hb, _ = b.get(key, (float("nan"),) * 3)
            cells.append(f"{fa:.2f}/{fb:.2f} ; {ha:.2f}/{hb:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, f"tasks: fit {len(fit)}, held-out {len(held)}"])


def rule_table(fit: Sequence[dict[str, Any]], held: Sequence[dict[str, Any]]) -> str:
    rows = [(name, evaluate(fit, rule), evaluate(held, rule)) for name, rule in rules()]
    title = "all holding pieces kept / share of pieces kept (fit seeds ; held-out seeds)"
    return _fit_held_table(title, "rule", fit, held, rows)


def _kept_by_margins(index: int) -> Margin:
    """A relevant margin on document `index`: the judgement the compressor's record implies."""
    span = DocumentSpan(doc_index=index, start_char=0, end_char=1)
    return Margin(
        segment_index=index,
        text="",
        relevant=True,
        verdict="yes",
        char_span=(0, 1),
        token_span=(0, 1),
        documents=[span],
        n_tokens=0,
        seconds=0.0,
    )


def replay_hops(backend: Backend, results: Path, out: Path) -> None:
    """One record per compressor record of `results`: its kept pieces and every other piece's evidence lift."""

    def count(text: str) -> int:
        return len(backend.encode_text(text))

    for line in results.read_text().splitlines():
        r = json.loads(line) if line.strip() else None
        if r is None or r["system"] != "compressor":
            continue
        task = make_task(count, r["kind"], r["k"], r["seed"])
        judged = [DocumentJudgement(i, (_kept_by_margins(i),) if i in r["kept"] else ()) for i in range(r["k"])]
        t0 = time.perf_counter()
        # A threshold nothing reaches: the hop scores every dropped piece and keeps none (thresholds are applied later).
        hopped = follow_hops(judged, task.pieces, backend, task.question, hops=2, hop_threshold=1e9)
        seconds = time.perf_counter() - t0
        rec = {key: r[key] for key in ("task", "kind", "k", "seed", "holding", "seconds")}
        rec |= {"margin_kept": r["kept"], "lifts": [j.lift for j in hopped], "hop_seconds": seconds}
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def hop_kept(rec: dict[str, Any], threshold: float) -> list[int]:
    return sorted({*rec["margin_kept"], *(i for i, v in enumerate(rec["lifts"]) if v is not None and v >= threshold)})


def load_hops(path: Path, seeds: range) -> list[dict[str, Any]]:
    """`hops` records, or the `compressor_hops` records of a results file (they hold the same fields)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        r
        for r in records
        if r["seed"] in seeds and "lifts" in r and r.get("system", "compressor_hops") == "compressor_hops"
    ]


def hop_rule_table(fit: Sequence[dict[str, Any]], held: Sequence[dict[str, Any]], thresholds: Sequence[float]) -> str:
    def cells(records: Sequence[dict[str, Any]], t: float) -> Cells:
        tasks = []
        for r in records:
            kept = set(hop_kept(r, t))
            tasks.append(
                {
                    "k": r["k"],
                    "kind": r["kind"],
                    "holding": r["holding"],
                    "scores": [float(i in kept) for i in range(r["k"])],
                }
            )
        return evaluate(tasks, lambda s: {i for i, v in enumerate(s) if v})

    rows = [("margins" if t == math.inf else f">= {t}", cells(fit, t), cells(held, t)) for t in [math.inf, *thresholds]]
    title = "all holding pieces kept / share of pieces kept (fit seeds ; held-out seeds); 'margins' = hops=1"
    return _fit_held_table(title, "hop threshold", fit, held, rows)


def hop_answers(
    backend: Backend, hops_file: Path, threshold: float, out: Path, system: str = "compressor_hops"
) -> None:
    """`compressor_hops` records (the retrieval format) for what `threshold` keeps, answered by the reader."""

    def count(text: str) -> int:
        return len(backend.encode_text(text))

    for r in load_hops(hops_file, range(10**9)):
        task = make_task(count, r["kind"], r["k"], r["seed"])
        kept = hop_kept(r, threshold)
        # a replay's seconds are the margins read's; a compressor_hops record's include its hop pass
        read_seconds = r["seconds"] - (r["hop_seconds"] if "system" in r else 0.0)
        prediction = _answer(backend, [task.pieces[i] for i in kept], task.question)
        rec = {key: r[key] for key in ("task", "kind", "k", "seed", "holding")}
        rec |= {
            "system": system,
            "kept": kept,
            "recall": sum(i in kept for i in task.holding) / len(task.holding),
            "kept_share": len(kept) / r["k"],
            "correct": mentions(prediction, task.answer),
            "prediction": prediction,
            "seconds": read_seconds + (r["hop_seconds"] if system == "compressor_hops" else 0.0),
            "hop_seconds": r["hop_seconds"],
            "hop_threshold": threshold,
            "margin_kept": r["margin_kept"],
            "lifts": r["lifts"],
            "replayed": "system" not in r,
        }
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_rules", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lift = sub.add_parser("lift", help="question lift per piece of each task (loads the model)")
    lift.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    lift.add_argument("--seeds", type=int, default=20)
    lift.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("rules", help="the rule table of a lift file or a retrieval results file")
    rep.add_argument("file", type=Path)
    rep.add_argument("--field", default="lift", help="'lift', or a system whose records hold piece_scores")
    rep.add_argument("--fit", type=int, nargs=2, default=[0, 10], metavar=("FROM", "TO"))
    rep.add_argument("--held-out", type=int, nargs=2, default=[10, 20], metavar=("FROM", "TO"))
    hops = sub.add_parser("hops", help="replay the second hop on the compressor records of a results file (model)")
    hops.add_argument("file", type=Path)
    hops.add_argument("--out", type=Path, required=True)
    hop_rules = sub.add_parser("hop-rules", help="hop thresholds compared on a hops file")
    hop_rules.add_argument("file", type=Path)
    hop_rules.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5])
    hop_rules.add_argument("--fit", type=int, nargs=2, default=[0, 5], metavar=("FROM", "TO"))
    hop_rules.add_argument("--held-out", type=int, nargs=2, default=[5, 10], metavar=("FROM", "TO"))
    answers = sub.add_parser("hop-answers", help="the reader on what a hop threshold keeps (model)")
    answers.add_argument("file", type=Path)
    answers.add_argument("--hop-threshold", type=float, required=True)
    answers.add_argument("--out", type=Path, required=True)
    answers.add_argument(
        "--system", default="compressor_hops", help="the records' system ('compressor' with a threshold of 1e9: hops=1)"
    )
    args = parser.parse_args(argv)
    if args.command == "hop-rules":
        fit, held = load_hops(args.file, range(*args.fit)), load_hops(args.file, range(*args.held_out))
        print(hop_rule_table(fit, held, args.thresholds))
        return 0
    if args.command == "rules":
        fit = load(args.file, args.field, range(*args.fit))
        held = load(args.file, args.field, range(*args.held_out))
        print(rule_table(fit, held))
        return 0
    from wim_integrations import WiM

    backend = WiM.default().backend
    if args.command == "hops":
        replay_hops(backend, args.file, args.out)
        return 0
    if args.command == "hop-answers":
        hop_answers(backend, args.file, args.hop_threshold, args.out, args.system)
        return 0

    def count(text: str) -> int:
        return len(backend.encode_text(text))

    with args.out.open("a") as f:
        for k in args.ks:
            for kind in KINDS:
                for seed in range(args.seeds):
                    task = make_task(count, kind, k, seed)
                    rec = {"task": task.id, "kind": kind, "k": k, "seed": seed, "holding": list(task.holding)}
                    rec["lift"] = question_lift(backend, task.pieces, task.question)
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
