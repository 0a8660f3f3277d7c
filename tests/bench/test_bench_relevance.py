"""Margin ground truth from the tasks, the invented-fact check on hand-made margins, and the relevance metrics."""

from __future__ import annotations

import itertools
import random

import pytest

from benchmarks.relevance import (
    annotate_margin,
    margin_truth,
    needed_facts,
    novel_terms,
    relevance_stats,
    roc_auc,
    roc_curve,
)
from benchmarks.report import relevance_plot, relevance_table
from benchmarks.tasks import common_words_task, location_task, multihop_task, needle_task


def count(text: str) -> int:
    """A whitespace token counter: task generation needs no model here."""
    return len(text.split())


def _spans(text: str, n: int) -> list[tuple[int, int]]:
    cuts = [round(i * len(text) / n) for i in range(n + 1)]
    return list(itertools.pairwise(cuts))


def _fact_span(fact) -> tuple[int, int]:
    return fact.start_char, fact.start_char + len(fact.text)


# -- truth ----------------------------------------------------------------------------------------------------------


def test_needle_truth_is_the_segment_holding_the_code():
    task = needle_task(count, 1000, 0.5, seed=0)
    (fact,) = task.facts
    start, end = _fact_span(fact)
    assert margin_truth(task, (start - 50, start)) is False  # ends where the fact begins
    assert margin_truth(task, (end, end + 50)) is False
    assert margin_truth(task, (start, start + 1)) is True
    assert margin_truth(task, (end - 1, end + 300)) is True  # a fact cut by a border counts for both segments
    truths = [margin_truth(task, s) for s in _spans(task.context, 5)]
    assert truths.count(True) in (1, 2) and truths[2] is True  # depth 0.5: the middle segment of five


def test_multihop_truth_is_both_hops_not_the_decoy():
    task = multihop_task(count, 1200, seed=1)
    gift, decoy, home = task.facts
    assert needed_facts(task) == [gift, home] and not decoy.needed
    assert margin_truth(task, _fact_span(gift)) is True
    assert margin_truth(task, _fact_span(home)) is True
    assert margin_truth(task, _fact_span(decoy)) is False


def test_location_truth_is_every_move_of_the_person_asked_about():
    task = location_task(count, 1200, seed=3)
    target = task.question.split()[2]
    for fact in task.facts:
        assert fact.needed == fact.text.startswith(target + " ")
        assert margin_truth(task, _fact_span(fact)) is fact.needed
    assert 2 <= len(needed_facts(task)) < len(task.facts)  # the others' moves are distractors


def test_cwe_has_no_segment_truth():
    task = common_words_task(count, 400, seed=0)
    assert needed_facts(task) is None and margin_truth(task, (0, len(task.context))) is None


def test_truth_ignores_what_the_margin_says():
    task = needle_task(count, 800, 0.2, seed=0)
    (code,) = task.answers
    far = (len(task.context) - 100, len(task.context))
    copied = annotate_margin(task, {"text": f"The secret code is {code}.", "char_span": list(far)})
    assert copied["truth"] is False and not copied["hallucinated"]


# -- invented facts -------------------------------------------------------------------------------------------------

DOC = "The keeper of the lighthouse is Ines Marlowe. The secret code for the amber vault is 4417. Mary went home."
QUESTION = "Who keeps the Corran Point lighthouse?"


@pytest.mark.parametrize(
    ("margin", "novel"),
    [
        ("The keeper of the lighthouse is Ines Marlowe.", []),  # copied
        ("Ines Marlowe keeps the Corran Point light.", []),  # names from the question count as known
        ("The secret code is 4417.", []),
        ("4417.", []),
        ("The island of Zarvik is where Petra lives.", ["Zarvik", "Petra"]),  # invented place and person
        ("The code is 5521.", ["5521"]),  # invented number
        ("The code is 4,417.", ["4,417"]),  # not the text's number
        ("Nothing relevant. However, the text does not mention it.", []),  # sentence openers, WiM vocabulary
        ("1. Mary went home. 2. In part 3 nothing happens.", []),  # list markers and part numbers
        ("Unfortunately, I'm not sure. Yes.", []),
        ("The Keeper is MARY.", []),  # case does not matter for words of the text
        ("Mary met Mary-Ann.", ["Mary-Ann"]),
        ("", []),
    ],
)
def test_novel_terms(margin, novel):
    assert novel_terms(margin, DOC, QUESTION) == novel


def test_hallucinated_flag_on_annotated_margins():
    task = multihop_task(count, 900, seed=0)
    invented = annotate_margin(task, {"text": "Zorblax lives in the town of Quimby.", "char_span": [0, 10]})
    assert invented["hallucinated"] and invented["novel_terms"] == ["Zorblax", "Quimby"]
    (town,) = task.answers
    grounded = annotate_margin(task, {"text": f"Someone lives in the town of {town}.", "char_span": [0, 10]})
    assert not grounded["hallucinated"] and grounded["novel_terms"] == []


# -- metrics --------------------------------------------------------------------------------------------------------


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_roc_auc_cases():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert roc_auc([0.5] * 4, [True, False, True, False]) == 0.5  # all tied
    assert roc_auc([1.0, 0.5, 0.5, 0.0], [True, True, False, False]) == pytest.approx(7 / 8)  # one tied pair
    assert roc_auc([0.3, 0.4], [True, True]) is None and roc_auc([], []) is None


def test_roc_auc_matches_pairwise_count_with_many_ties():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 30)
        scores = [rng.choice([-1.0, 0.0, 0.5, 2.0, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if 0 < sum(labels) < n:
            assert roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))


def test_roc_curve_area_equals_auc():
    scores = [3.0, 2.0, 2.0, 1.0, 0.5, 0.5, 0.0]
    labels = [True, True, False, True, False, False, False]
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    trapezoids = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert trapezoids == pytest.approx(roc_auc(scores, labels))


def _m(truth, relevant, score=None, hallucinated=False):
    return {"truth": truth, "relevant": relevant, "score": score, "hallucinated": hallucinated}


def test_relevance_stats_precision_recall_f1_hallucinated():
    margins = [
        _m(True, True, 2.0),
        _m(True, False, 0.5),
        _m(False, True, 1.0, hallucinated=True),
        _m(False, False, -1.0),
        _m(False, False, 0.0),
        _m(None, True, 5.0),  # cwe: no truth, left out
    ]
    st = relevance_stats(margins)
    assert (st.n_margins, st.n_truth, st.n_kept, st.true_kept, st.hallucinated_kept) == (5, 2, 2, 1, 1)
    assert st.precision == 0.5 and st.recall == 0.5 and st.f1 == 0.5
    assert st.hallucinated_kept_rate == 0.5
    assert st.auc == pytest.approx(5 / 6) and st.n_scored == 5


def test_relevance_stats_nothing_kept_and_no_scores():
    st = relevance_stats([_m(True, False), _m(False, False)])
    assert st.precision is None and st.recall == 0.0 and st.f1 == 0.0
    assert st.hallucinated_kept_rate is None and st.auc is None


# -- report ---------------------------------------------------------------------------------------------------------


def _record(system, task_id, kind, seconds, margins):
    return {"system": system, "task_id": task_id, "kind": kind, "seconds": seconds, "detail": {"margins": margins}}


def test_relevance_table_and_plot(tmp_path):
    scored = [_m(True, True, 3.0), _m(False, False, -1.0), _m(False, True, 0.2, hallucinated=True)]
    records = [
        _record("long_context", "t1", "needle", 2.0, []),
        _record("long_context", "t2", "location", 4.0, []),
        _record("wim", "t1", "needle", 4.0, [_m(True, False), _m(False, False)]),
        _record("wim", "t2", "location", 8.0, [_m(True, False), _m(False, False)]),
        _record("wim[classification=pmi]", "t1", "needle", 3.0, scored),
        _record("wim[classification=pmi]", "t2", "location", 4.0, [_m(True, True, 1.0), _m(False, False, 0.1)]),
        _record("wim_margins_only", "t1", "needle", 5.0, []),  # ablations reuse wim's margins: no rows of their own
    ]
    md = relevance_table(records)
    main, per_kind = md.split("\n\n")[:2]

    def rows(table: str) -> dict[str, list[str]]:
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines() if ln.startswith("| `")]
        return {c[0].strip("`"): c[1:] for c in cells}

    overall = rows(main)
    assert list(overall) == ["wim", "wim[classification=pmi]"]  # WiM variants only, not the ablations
    # margins, truth +, kept, P, R, F1, AUC, hallucinated & kept, time / long_context
    assert overall["wim"] == ["4", "2", "0", "–", "0.00", "0.00", "–", "–", "2.00x"]
    # P = 2/3, R = 2/2; the scores rank every positive above every negative; 1 of 3 kept invented a fact
    assert overall["wim[classification=pmi]"] == ["5", "2", "3", "0.67", "1.00", "0.80", "1.00", "33 % (1)", "1.25x"]
    assert "location: F1 (AUC)" in per_kind and "needle: F1 (AUC)" in per_kind
    assert rows(per_kind) == {
        "wim": ["0.00 (–)", "0.00 (–)"],
        "wim[classification=pmi]": ["1.00 (1.00)", "0.67 (1.00)"],
    }
    png = relevance_plot(records, tmp_path / "rel.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_relevance_table_without_truth_says_so(tmp_path):
    records = [_record("wim", "t1", "needle", 1.0, [{"text": "x", "verdict": "no"}])]
    assert "No margin ground truth" in relevance_table(records)
    assert relevance_plot(records, tmp_path / "rel.png") is None
