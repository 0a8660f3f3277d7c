"""Keep rules for the document filters, compared offline on per-piece scores of the retrieval tasks (issue 26).

    python -m benchmarks.retrieval_rules lift --ks 4 8 16 --seeds 20 --out lift.jsonl   # question lift per piece
    python -m benchmarks.retrieval_rules rules FILE --field lift --fit 0 10 --held-out 10 20
    python -m benchmarks.retrieval_rules rules RESULTS.jsonl --field compressor --fit 0 5 --held-out 5 10

Two per-piece scores, on the tasks of `benchmarks/retrieval.py`:

- `compressor`: what `WiMDocumentCompressor` judges by, each piece's best margin score (`segment_pmi`), from the
  `piece_scores` of its records in a results file;
- `lift`: a question-aware score that needs no margin: how much the piece, read alone, raises the question's
  likelihood, mean log P(question | piece) - mean log P(question | nothing) over the question's tokens (the
  unsupervised passage re-ranking of Sachan et al., 2022, as a filter score).

Each rule (absolute threshold, within a margin of the best piece, a share of the best, mean + c std, top-n) is
reported on the fit seeds and the held-out seeds: share of tasks whose holding pieces were all kept, and the share of
pieces kept, per k and kind. Rules are chosen on the fit seeds only; the held-out rows are what to believe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from wim_integrations.backends.base import Backend

from .retrieval import KINDS, make_task

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


def evaluate(tasks: Sequence[dict[str, Any]], rule: Rule) -> dict[tuple[Any, str], tuple[float, float, int]]:
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


def rule_table(fit: Sequence[dict[str, Any]], held: Sequence[dict[str, Any]]) -> str:
    keys = [*sorted({(t["k"], t["kind"]) for t in [*fit, *held]}), ("all", "all")]
    head = " | ".join(f"k {k} {kind}" if k != "all" else "all" for k, kind in keys)
    lines = [
        "all holding pieces kept / share of pieces kept (fit seeds ; held-out seeds)",
        f"| rule | {head} |",
        "|---|" + "---|" * len(keys),
    ]
    for name, rule in rules():
        a, b = evaluate(fit, rule), evaluate(held, rule)
        cells = []
        for key in keys:
            fa, fb, _ = a.get(key, (float("nan"),) * 3)
            ha, hb, _ = b.get(key, (float("nan"),) * 3)
            cells.append(f"{fa:.2f}/{fb:.2f} ; {ha:.2f}/{hb:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = f"tasks: fit {len(fit)}, held-out {len(held)}"
    return "\n".join([*lines, counts])


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
    args = parser.parse_args(argv)
    if args.command == "rules":
        fit = load(args.file, args.field, range(*args.fit))
        held = load(args.file, args.field, range(*args.held_out))
        print(rule_table(fit, held))
        return 0
    from wim_integrations import WiM

    backend = WiM.default().backend

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
