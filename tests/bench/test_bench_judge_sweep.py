"""benchmarks.judge_sweep: rescoring recorded judge terms is the engine's own weighted sum, and the grid finds the
weights that separate a constructed set of margins."""

from __future__ import annotations

import json

import pytest

from benchmarks import judge_sweep
from wim_integrations.reading.judge_model import JudgeTerms

SYSTEM = "wim[classification=judge]"


def margin(truth: bool, g: float, q: float, v: float, r: float) -> dict:
    terms = {"grounding": g, "question": q, "verdict": v, "relevance": r}
    return {"truth": truth, "relevant": False, "score": 0.0, "hallucinated": False, "score_terms": terms}


def write(tmp_path, margins):
    path = tmp_path / "results.jsonl"
    rec = {"system": SYSTEM, "detail": {"margins": margins}}
    path.write_text(json.dumps(rec) + "\n" + json.dumps({"system": "other", "detail": {"margins": []}}) + "\n")
    return path


def test_rescoring_is_the_engines_weighted_sum():
    m = margin(True, 1.0, 2.0, 0.5, -1.5)
    w = (-0.75, 0.3, -0.25)
    assert judge_sweep.score(m, w) == pytest.approx(JudgeTerms(**m["score_terms"]).combined(w))


def test_the_grid_finds_the_judge_weight_that_separates_echoes(tmp_path, capsys):
    # grounding alone cannot tell the facts (truth) from the echoes; only the judge's relevance (negated) can
    margins = [margin(True, 1.0, 0.0, 0.0, 0.0) for _ in range(3)] + [
        margin(False, 1.0, 0.0, 0.0, 2.0) for _ in range(3)
    ]
    judge_sweep.main([str(write(tmp_path, margins)), SYSTEM, "--top", "1"])
    out = capsys.readouterr().out
    assert "AUC of grounding alone: 0.50" in out and "AUC of relevance alone: 0.00" in out
    best = out.strip().splitlines()[-1]
    assert best.split("|")[1].strip().endswith("-0.5")  # the strongest negative relevance weight
    assert "| 3 | 1.00 | 1.00 | 1.00 | 1.00 |" in best
    judge_sweep.main([str(write(tmp_path, margins)), SYSTEM, "--weights", "0,0,0", "--threshold", "1.0"])
    assert "| 0, 0, 0 | 1 | 6 | 0.50 | 1.00 | 0.67 | 0.50 |" in capsys.readouterr().out


def test_margins_without_judge_terms_are_refused(tmp_path):
    m = margin(True, 1.0, 0.0, 0.0, 0.0)
    del m["score_terms"]["verdict"]
    with pytest.raises(SystemExit, match="lack judge terms"):
        judge_sweep.main([str(write(tmp_path, [m])), SYSTEM])
