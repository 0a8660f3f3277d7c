"""Fit `classification="judge"` from recorded margins: every margin of a `judge` read carries its four terms
(`score_terms`: grounding and question from the main model, verdict and relevance from the judge model), so weights
and thresholds can be compared against the ground truth without reading again (greedy margins do not depend on how
they are judged; only the answer does).

    python -m benchmarks.judge_sweep benchmarks/results/quick-...jsonl 'wim[classification=judge]'
    python -m benchmarks.judge_sweep FILE SYSTEM --weights -0.75,0.1,0 --threshold 0.0   # one setting

Score: grounding + w_q * question + w_v * verdict + w_r * relevance (`JudgeTerms.combined`). The sweep prints the
AUC of each term alone, then, per weight triple of the grid, the threshold with the best pooled F1 (ties: the lowest
threshold), best first.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .question_sweep import THRESHOLDS, margins_of
from .relevance import RelevanceStats, relevance_stats, roc_auc

TERMS = ("grounding", "question", "verdict", "relevance")
W_QUESTION = (0.0, -0.5, -0.75)  # 0: segment_pmi's grounding alone; -0.75: question_pmi's fitted weight
W_VERDICT = (-1.0, -0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.3)
W_RELEVANCE = (-0.5, -0.35, -0.25, -0.15, 0.0, 0.25)


def score(m: dict[str, Any], weights: Sequence[float]) -> float:
    t = m["score_terms"]
    w_q, w_v, w_r = weights
    return float(t["grounding"] + w_q * t["question"] + w_v * t["verdict"] + w_r * t["relevance"])


def rescored(margins: Sequence[dict[str, Any]], weights: Sequence[float], threshold: float) -> RelevanceStats:
    out = []
    for m in margins:
        s = score(m, weights)
        out.append({**m, "score": s, "relevant": s >= threshold})
    return relevance_stats(out)


def line(weights: Sequence[float], threshold: float, st: RelevanceStats) -> str:
    p = "–" if st.precision is None else f"{st.precision:.2f}"
    auc = "–" if st.auc is None else f"{st.auc:.2f}"
    w = ", ".join(f"{x:g}" for x in weights)
    rate = st.hallucinated_kept_rate
    hk = "–" if rate is None else f"{rate:.0%} ({st.hallucinated_kept})"
    return f"| {w} | {threshold:g} | {st.n_kept} | {p} | {st.recall or 0:.2f} | {st.f1 or 0:.2f} | {auc} | {hk} |"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.judge_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("system")
    ap.add_argument("--weights", help="w_q,w_v,w_r: one weight triple instead of the grid")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--top", type=int, default=12, help="rows of the grid to print")
    args = ap.parse_args(argv)
    margins = margins_of(args.results, args.system)
    if any(k not in m["score_terms"] for m in margins for k in TERMS):
        raise SystemExit(f"{args.results}: the margins of {args.system!r} lack judge terms (run classification=judge)")
    labels = [bool(m["truth"]) for m in margins]
    print(f"{len(margins)} labelled margins, {sum(labels)} truth-positive")
    for k in TERMS:
        auc = roc_auc([m["score_terms"][k] for m in margins], labels)
        print(f"AUC of {k} alone: {'–' if auc is None else f'{auc:.2f}'}")
    print("| w_q, w_v, w_r | threshold | kept | precision | recall | F1 | AUC | hallucinated & kept |")
    print("|---|---|---|---|---|---|---|---|")
    if args.weights:
        grid: list[tuple[float, ...]] = [tuple(float(x) for x in args.weights.split(","))]
        if len(grid[0]) != 3:
            raise SystemExit("--weights takes three numbers: w_q,w_v,w_r")
    else:
        grid = list(itertools.product(W_QUESTION, W_VERDICT, W_RELEVANCE))
    rows = []
    for w in grid:
        if args.threshold is not None:
            t = args.threshold
        else:
            t = max(THRESHOLDS, key=lambda x: (rescored(margins, w, x).f1 or 0.0, -x))
        rows.append((w, t, rescored(margins, w, t)))
    rows.sort(key=lambda r: (-(r[2].f1 or 0.0), -(r[2].auc or 0.0)))
    for w, t, st in rows[: args.top]:
        print(line(w, t, st))


if __name__ == "__main__":
    main()
