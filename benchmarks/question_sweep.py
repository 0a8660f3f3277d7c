"""Calibrate `question_pmi` from recorded margins: every margin of a `question_pmi` read carries its two terms
(`score_terms`: grounding, the segment_pmi score, and question, the question's lift), so forms of the combined score,
weights and thresholds can be compared against the ground truth without reading again (greedy margins do not depend
on how they are judged; only the answer does).

    python -m benchmarks.question_sweep benchmarks/results/quick-...jsonl 'wim[classification=question_pmi]'
    python -m benchmarks.question_sweep FILE SYSTEM --form sum --weight -0.75 --threshold -0.2   # one setting

The sweep prints, per form and weight, the threshold with the best pooled F1 (ties: the lowest threshold) and the AUC
of the combined score; with --threshold only that setting. Forms: "sum" = g + w q (what `question_pmi` computes, w =
`config.QUESTION_WEIGHT`), "min" = min(g, w q), "g" = g (segment_pmi), "q" = q.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .relevance import RelevanceStats, relevance_stats
from .runner import load_records

FORMS: dict[str, Callable[[float, float, float], float]] = {
    "min": lambda g, q, w: min(g, w * q),
    "sum": lambda g, q, w: g + w * q,
    "g": lambda g, q, w: g,
    "q": lambda g, q, w: q,
}
WEIGHTS = (-1.0, -0.75, -0.5, -0.3, 0.25, 0.5, 1.0, 2.0)  # "min" takes the positive ones only
THRESHOLDS = tuple(round(-0.5 + 0.05 * i, 2) for i in range(41))  # -0.5 .. 1.5


def margins_of(path: Path, system: str) -> list[dict[str, Any]]:
    """The labelled margins of `system` in a results file that carry `score_terms`."""
    found = [
        m
        for rec in load_records(path)
        if rec["system"] == system
        for m in rec.get("detail", {}).get("margins", [])
        if m.get("truth") is not None
    ]
    if not found or any("score_terms" not in m for m in found):
        raise SystemExit(f"{path}: no margins of {system!r} with score_terms (run it with classification=question_pmi)")
    return found


def rescored(margins: Sequence[dict[str, Any]], form: str, weight: float, threshold: float) -> RelevanceStats:
    f = FORMS[form]
    out = []
    for m in margins:
        s = f(m["score_terms"]["grounding"], m["score_terms"]["question"], weight)
        out.append({**m, "score": s, "relevant": s >= threshold})
    return relevance_stats(out)


def line(form: str, weight: float, threshold: float, st: RelevanceStats) -> str:
    p = "–" if st.precision is None else f"{st.precision:.2f}"
    auc = "–" if st.auc is None else f"{st.auc:.2f}"
    rate = st.hallucinated_kept_rate
    hk = "–" if rate is None else f"{rate:.0%} ({st.hallucinated_kept})"
    return (
        f"| {form} | {weight:g} | {threshold:g} | {st.n_kept} | {p} | {st.recall or 0:.2f} | {st.f1 or 0:.2f} | {auc} "
        f"| {hk} |"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.question_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("system")
    ap.add_argument("--form", choices=sorted(FORMS))
    ap.add_argument("--weight", type=float)
    ap.add_argument("--threshold", type=float)
    args = ap.parse_args(argv)
    margins = margins_of(args.results, args.system)
    print(f"{len(margins)} labelled margins, {sum(1 for m in margins if m['truth'])} truth-positive")
    print("| form | weight | threshold | kept | precision | recall | F1 | AUC | hallucinated & kept |")
    print("|---|---|---|---|---|---|---|---|---|")
    forms = [args.form] if args.form else list(FORMS)
    for form in forms:
        if args.weight is not None:
            weights: Sequence[float] = [args.weight]
        elif form in ("min", "sum"):
            weights = [w for w in WEIGHTS if w > 0 or form == "sum"]
        else:
            weights = [1.0]
        for w in weights:
            if args.threshold is not None:
                print(line(form, w, args.threshold, rescored(margins, form, w, args.threshold)))
                continue
            best = max(THRESHOLDS, key=lambda t: (rescored(margins, form, w, t).f1 or 0.0, -t))
            print(line(form, w, best, rescored(margins, form, w, best)))


if __name__ == "__main__":
    main()
