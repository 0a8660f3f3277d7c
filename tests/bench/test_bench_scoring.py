"""Scorers: right answers score 1, wrong or hedged answers 0, aggregation by F1."""

from __future__ import annotations

import pytest

from benchmarks.scoring import choice_match, exact_match, normalize, score, set_f1
from benchmarks.tasks import Task

ROOMS = ("kitchen", "garden", "office", "bathroom", "hallway", "bedroom")


def _task(kind: str, answers: tuple[str, ...], candidates: tuple[str, ...]) -> Task:
    return Task("t", kind, "ctx", "q?", answers, candidates, 100, 100, None, 0, 8)


def test_normalize():
    assert normalize("  The Kitchen!\n") == "kitchen"
    assert normalize("“4417.”") == "4417"


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("4417", 1.0),
        ("The secret code is 4417.", 1.0),
        ("4418", 0.0),
        ("44170", 0.0),  # whole words only
        ("", 0.0),
        ("I don't know.", 0.0),
    ],
)
def test_needle_scores(prediction, expected):
    assert score(_task("needle", ("4417",), ("4417",)), prediction) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Mary is in the garden.", 1.0),
        ("garden", 1.0),
        ("the kitchen", 0.0),
        ("Mary went from the kitchen to the garden.", 0.0),  # naming several rooms is no answer
        ("kitchen, garden, office, bathroom, hallway, bedroom", 0.0),
    ],
)
def test_location_scores(prediction, expected):
    assert score(_task("location", ("garden",), ROOMS), prediction) == expected


def test_cwe_f1():
    gold = ("balor", "mivek", "tisan")
    cands = (*gold, "quodor", "fenlun")
    assert set_f1("balor, mivek, tisan", gold, cands) == 1.0
    assert set_f1("The words are: Balor, MIVEK and tisan.", gold, cands) == 1.0
    assert set_f1("quodor, fenlun", gold, cands) == 0.0
    assert set_f1("", gold, cands) == 0.0
    assert set_f1("balor", gold, cands) == pytest.approx(0.5)  # P=1, R=1/3
    assert set_f1("balor, quodor", gold, cands) == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert score(_task("cwe", gold, cands), "mivek, tisan, balor") == 1.0


def test_exact_and_choice_match():
    assert exact_match("The Garden.", "garden") == 1.0
    assert exact_match("in the garden", "garden") == 0.0
    assert exact_match("", "") == 0.0
    assert choice_match("Velmor", "Velmor", ("Velmor", "Tiskan")) == 1.0
    assert choice_match("Tiskan", "Velmor", ("Velmor", "Tiskan")) == 0.0
