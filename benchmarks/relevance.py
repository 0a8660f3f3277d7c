"""Margin relevance against ground truth: which segments hold a needed fact, which margins invent facts, and the
precision / recall / F1 / ROC-AUC of a WiM variant's margin verdicts and scores.

Truth comes from the task alone (where its planted facts sit), never from what a margin says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .tasks import PlantedFact, Task

# -- ground truth ---------------------------------------------------------------------------------------------------


def needed_facts(task: Task) -> list[PlantedFact] | None:
    """The planted facts the answer needs; None when the task has no segment-local facts (cwe: the answer counts
    words over the whole list, so no segment is more relevant than another).

    - needle: its one fact;
    - multihop: both hops (who received the item, where that person lives), not the decoy town;
    - location: every move of the person asked about (a reader at that point cannot know whether a later move follows;
      the last one decides the answer), not the moves of the others.
    """
    if not task.facts:
        return None
    return [f for f in task.facts if f.needed]


def segment_holds_fact(span: tuple[int, int], facts: Sequence[PlantedFact]) -> bool:
    """Whether the segment's [start, end) character span overlaps any fact sentence (a fact cut by a segment border
    counts for both segments)."""
    start, end = span
    return any(f.start_char < end and start < f.start_char + len(f.text) for f in facts)


def margin_truth(task: Task, span: tuple[int, int]) -> bool | None:
    """Truth label of the margin written after the segment covering `span`; None when the task defines none."""
    facts = needed_facts(task)
    return None if facts is None else segment_holds_fact(span, facts)


# -- hallucinated facts ---------------------------------------------------------------------------------------------
# A margin "states a fact absent from the text" when it names a number or a capitalised name that occurs neither in the
# document nor in the question. Capitalised words that are ordinary sentence openers or WiM's own vocabulary are not
# names; any other capitalised word whose lower-case form is also absent from the text counts as invented. Whole
# numbers up to 20 are not counted: margins use them for list items and part numbers ("1.", "part 3").
_TERM = re.compile(r"\d+(?:[.,]\d+)*|[A-Z][A-Za-z'’-]*")
_WORD = re.compile(r"[a-z0-9]+")
_NOT_NAMES = frozenset(
    """
    a an the this that these those there here it its i we you he she they his her their our my your me him them us
    and or but so yet if then when while as because since although though however therefore thus also still only just
    in on at of to from by for with without into onto about above below after before during between among through
    under over near no not nothing none nobody yes yeah ok okay is are was were be been has have had do does did
    can could will would should may might must shall what which who whom whose where why how all any some each every
    both either neither one two three first second third next last finally overall unfortunately fortunately
    according based given note notes margin margins question questions answer answers text texts part parts
    relevant irrelevant information fact facts summary extract extracts section passage document context mentioned
    mention key main important unknown sorry please let
    """.split()  # noqa: SIM905 (a word list reads better as text)
)


def novel_terms(margin: str, document: str, question: str) -> list[str]:
    """Numbers and capitalised names in `margin` that occur neither in `document` nor in `question` (in order, once
    each). Matching is by whole lower-case word, so "Velmor" is found in "...town of Velmor." and "4417" in "4417."."""
    known = set(_WORD.findall(document.lower())) | set(_WORD.findall(question.lower()))
    found: list[str] = []
    for term in _TERM.findall(margin):
        words = _WORD.findall(term.lower())
        if not words or (term[0].isalpha() and words[0] in _NOT_NAMES) or (term.isdigit() and int(term) <= 20):
            continue
        if any(w not in known for w in words) and term not in found:
            found.append(term)
    return found


# -- metrics --------------------------------------------------------------------------------------------------------


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the probability that a random positive outscores a random negative, ties counted
    as one half (Mann-Whitney U from average ranks). None without both classes."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # average rank of the tie group, 1-based
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates), one point per distinct threshold, from (0, 0) to (1, 1)."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    for i, (s, y) in enumerate(pairs):
        tp, fp = tp + bool(y), fp + (not y)
        if i + 1 == len(pairs) or pairs[i + 1][0] != s:
            fpr.append(fp / n_neg if n_neg else 0.0)
            tpr.append(tp / n_pos if n_pos else 0.0)
    return fpr, tpr


@dataclass(frozen=True)
class RelevanceStats:
    n_margins: int  # margins with a truth label
    n_truth: int  # of which truth-positive
    n_kept: int
    true_kept: int
    hallucinated_kept: int
    auc: float | None  # None: no scores, or only one class
    n_scored: int

    @property
    def precision(self) -> float | None:
        return self.true_kept / self.n_kept if self.n_kept else None

    @property
    def recall(self) -> float | None:
        return self.true_kept / self.n_truth if self.n_truth else None

    @property
    def f1(self) -> float | None:
        if not self.n_truth:
            return None
        p, r = self.precision or 0.0, self.recall or 0.0
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def hallucinated_kept_rate(self) -> float | None:
        return self.hallucinated_kept / self.n_kept if self.n_kept else None


def relevance_stats(margins: Iterable[dict[str, Any]]) -> RelevanceStats:
    """Pooled (micro) statistics over margin records with "truth", "relevant", "score" and "hallucinated" keys;
    margins without a truth label (cwe) are left out. AUC uses the margins that carry a score."""
    labelled = [m for m in margins if m.get("truth") is not None]
    kept = [m for m in labelled if m["relevant"]]
    scored = [m for m in labelled if m.get("score") is not None]
    return RelevanceStats(
        n_margins=len(labelled),
        n_truth=sum(1 for m in labelled if m["truth"]),
        n_kept=len(kept),
        true_kept=sum(1 for m in kept if m["truth"]),
        hallucinated_kept=sum(1 for m in kept if m["hallucinated"]),
        auc=roc_auc([m["score"] for m in scored], [m["truth"] for m in scored]),
        n_scored=len(scored),
    )


def annotate_margin(task: Task, margin: dict[str, Any]) -> dict[str, Any]:
    """The margin record with its truth label, invented terms and hallucination flag added."""
    novel = novel_terms(margin["text"], task.context, task.question)
    return {
        **margin,
        "truth": margin_truth(task, tuple(margin["char_span"])),
        "novel_terms": novel,
        "hallucinated": bool(novel),
    }
