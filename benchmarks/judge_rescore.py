"""Judge recorded margins without reading again: the judge model's two numbers (`JudgeScorer`, the engine's own code)
for every margin of a recorded `question_pmi` read, combined with its recorded terms as `classification="judge"`
combines them. Greedy margins do not depend on how they are judged, so this gives the `judge` mode's margin scores and
kept sets for those reads; only answers need a read (of the tasks whose kept set changed, listed at the end).

    python -m benchmarks.judge_rescore benchmarks/results/medium-...jsonl 'wim[classification=question_pmi]' \\
        --judge gemma-3-270m-q4_k_m.gguf --out benchmarks/results/judge/medium-rescored.jsonl
    python -m benchmarks.judge_sweep benchmarks/results/judge/medium-rescored.jsonl rescored   # its statistics

Each output line holds a task's id, its recorded answer score and its margins (system "rescored").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from wim_integrations.config import DEFAULT_THRESHOLDS, JUDGE_WEIGHTS
from wim_integrations.llamacpp_models import judge_backend
from wim_integrations.reading.judge_model import JudgeScorer, JudgeTerms

from .runner import load_records


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.judge_rescore", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("system", help="a question_pmi variant whose margins carry score_terms")
    ap.add_argument("--judge", required=True, help="the judge model's GGUF file")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    records = [r for r in load_records(args.results) if r["system"] == args.system]
    if not records:
        raise SystemExit(f"{args.results}: no records of {args.system!r}")
    judge = judge_backend(args.judge)
    threshold = DEFAULT_THRESHOLDS["judge"]
    changed = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as fh:
        for rec in records:
            margins = rec["detail"]["margins"]
            if any("score_terms" not in m for m in margins):
                raise SystemExit(f"{rec['task_id']}: margins without score_terms (run classification=question_pmi)")
            numbers = JudgeScorer(judge, rec["question"]).terms([m["text"] for m in margins])
            out = []
            for m, (verdict, relevance) in zip(margins, numbers, strict=True):
                t = JudgeTerms(m["score_terms"]["grounding"], m["score_terms"]["question"], verdict, relevance)
                score = t.combined(JUDGE_WEIGHTS)
                out.append({**m, "score": score, "relevant": score >= threshold, "score_terms": t.as_dict()})
            if [m["relevant"] for m in out] != [m["relevant"] for m in margins]:
                changed.append(rec["task_id"])
            line = {"task_id": rec["task_id"], "system": "rescored", "score": rec["score"], "detail": {"margins": out}}
            fh.write(json.dumps(line) + "\n")
            fh.flush()
    print(f"{args.out}: {len(records)} tasks; kept set changed (read these again for answers): {changed or 'none'}")


if __name__ == "__main__":
    main()
