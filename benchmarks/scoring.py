"""Scorers: normalized match for single answers, F1 over listed words for aggregation. Scores lie in [0, 1]."""

from __future__ import annotations

import re
import string

from .tasks import Task

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’]")


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    words = _PUNCT.sub(" ", text.lower()).split()
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def mentions(prediction: str, answer: str) -> bool:
    """Whether the normalized answer occurs in the normalized prediction as whole words."""
    pred, ans = f" {normalize(prediction)} ", normalize(answer)
    return bool(ans) and f" {ans} " in pred


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize(prediction) == normalize(answer) and bool(normalize(answer)))


def choice_match(prediction: str, answer: str, candidates: tuple[str, ...] = ()) -> float:
    """1 if the prediction names the answer and no other candidate (listing every room is not an answer)."""
    if not mentions(prediction, answer):
        return 0.0
    others = [c for c in candidates if normalize(c) != normalize(answer)]
    return 0.0 if any(mentions(prediction, c) for c in others) else 1.0


def set_f1(prediction: str, answers: tuple[str, ...], candidates: tuple[str, ...]) -> float:
    """F1 between the gold words and the candidate words the prediction names (other words are ignored)."""
    gold = {normalize(a) for a in answers}
    named = {normalize(c) for c in candidates if mentions(prediction, c)}
    hit = len(gold & named)
    if not hit:
        return 0.0
    precision, recall = hit / len(named), hit / len(gold)
    return 2 * precision * recall / (precision + recall)


def score(task: Task, prediction: str) -> float:
    if task.kind == "cwe":
        return set_f1(prediction, task.answers, task.candidates)
    return choice_match(prediction, task.answers[0], task.candidates)
