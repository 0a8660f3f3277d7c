"""Later hops of the document filters (reading/hops.py, filtering.follow_hops) on the pure-Python fake backend, whose
log-probabilities are exact: each evidence lift equals plain teacher-forced recomputation, and what each hop keeps
follows from those numbers."""

from __future__ import annotations

import math

import pytest
from fake_backend import FakeBackend, teacher_forced
from test_filtering import _margin

from wim_integrations import WiMInputError
from wim_integrations.backends.base import Capabilities
from wim_integrations.filtering import DEFAULT_HOPS, follow_hops, judge_documents, resolve_hops
from wim_integrations.reading.hops import PIECE_SEPARATOR, QUESTION_LABEL, EvidenceLift

# The fake model writes (and scores finitely) only a few characters: the question uses those.
QUESTION = "Co 12 tale son"
PIECES = ["Ban 3 is ten", "lost rain", "", "Dell on 2", "CM 0 oats", "not 1 rule"]


def _lift(backend: FakeBackend, kept: list[str], piece: str, question: str = QUESTION) -> float:
    """mean log P(question | head, kept, piece) - the same without the piece, recomputed from scratch."""
    head = backend.encode_template(backend.chat_frame().prefix)
    evidence = [t for text in kept for t in backend.encode_text(text + PIECE_SEPARATOR)]
    q = backend.encode_text(" " + question)
    label = backend.encode_text(QUESTION_LABEL)

    def mean_q(prefix: list[int]) -> float:
        return sum(teacher_forced([*head, *evidence, *prefix, *label], q)) / len(q)

    return mean_q(backend.encode_text(piece)) - mean_q([])


def test_evidence_lift_equals_recomputation_and_kept_pieces_condition_it():
    backend = FakeBackend()
    lift = EvidenceLift(backend, QUESTION)
    first = lift.scores(PIECES[:2])
    assert first == [_lift(backend, [], p) for p in PIECES[:2]]
    lift.keep([PIECES[0]])
    after = lift.scores(PIECES[1:2] + PIECES[3:])
    assert after == [_lift(backend, [PIECES[0]], p) for p in PIECES[1:2] + PIECES[3:]]
    assert after[0] != first[1]  # the kept piece is read before: the same piece scores differently
    assert lift.scores([]) == []


def _judged(relevant_docs: set[int]) -> list:
    margins = [_margin(i, [i], i in relevant_docs, 1.0 if i in relevant_docs else 0.0) for i in range(len(PIECES))]
    return judge_documents(margins, len(PIECES))


def _hop_rule(backend, kept, rest, threshold):
    """What one hop keeps, from recomputed lifts: the pieces of `rest` at or above the threshold."""
    return [i for i in rest if _lift(backend, [PIECES[j] for j in kept], PIECES[i]) >= threshold]


def test_each_hop_keeps_what_reaches_the_threshold_given_all_kept_so_far():
    backend = FakeBackend()
    judged = _judged({0})
    rest = [1, 3, 4, 5]  # piece 2 is empty: never scored, never kept
    lifts = sorted(_lift(backend, [PIECES[0]], PIECES[i]) for i in rest)
    threshold = (lifts[1] + lifts[2]) / 2  # two pieces pass at the second hop
    second = _hop_rule(backend, [0], rest, threshold)
    assert len(second) == 2
    third = _hop_rule(backend, [0, *second], [i for i in rest if i not in second], threshold)

    two = follow_hops(judged, PIECES, backend, QUESTION, hops=2, hop_threshold=threshold)
    assert [j.index for j in two if j.hop == 2] == second
    assert [j.index for j in two if j.relevant] == sorted([0, *second])
    assert two[0].hop is None and two[0].lift is None and two[2].lift is None  # margin-kept, empty: not scored
    assert all(math.isfinite(two[i].lift) for i in rest)

    three = follow_hops(judged, PIECES, backend, QUESTION, hops=3, hop_threshold=threshold)
    assert [j.index for j in three if j.hop == 3] == third
    assert [j.index for j in three if j.relevant] == sorted([0, *second, *third])
    assert not three[2].relevant


def test_hops_stop_when_a_hop_keeps_nothing_and_one_hop_is_the_margins_alone():
    backend = FakeBackend()
    judged = _judged({0, 3})
    assert follow_hops(judged, PIECES, backend, QUESTION, hops=1) == judged
    top = max(_lift(backend, [PIECES[0], PIECES[3]], PIECES[i]) for i in (1, 4, 5))
    calls = []
    original = backend.score_rows
    backend.score_rows = lambda *a, **kw: calls.append(1) or original(*a, **kw)
    kept = follow_hops(judged, PIECES, backend, QUESTION, hops=5, hop_threshold=top + 1.0)
    assert [j.index for j in kept if j.relevant] == [0, 3] and len(calls) == 1  # nothing new: no second pass


def test_with_nothing_kept_the_first_later_hop_judges_each_piece_alone():
    backend = FakeBackend()
    kept = follow_hops(_judged(set()), PIECES, backend, QUESTION, hops=2, hop_threshold=0.0)
    expected = [i for i in (0, 1, 3, 4, 5) if _lift(backend, [], PIECES[i]) >= 0.0]
    assert [j.index for j in kept if j.relevant] == expected


@pytest.mark.parametrize(
    "hops, threshold, match",
    [(0, 0.3, "hops"), (9, 0.3, "hops"), (2.0, 0.3, "hops"), (True, 0.3, "hops"), (2, math.nan, "hop_threshold")],
)
def test_bad_hop_settings_are_refused(hops, threshold, match):
    with pytest.raises(WiMInputError, match=match):
        follow_hops([], [], FakeBackend(), QUESTION, hops=hops, hop_threshold=threshold)


def test_a_backend_without_prompt_logprobs_is_refused_for_later_hops():
    backend = FakeBackend(Capabilities(packed_rows=True, scoring="none"))
    with pytest.raises(WiMInputError, match="prompt log-probabilities"):
        follow_hops(_judged({0}), PIECES, backend, QUESTION, hops=2)
    assert follow_hops(_judged({0}), PIECES, backend, QUESTION, hops=1) == _judged({0})  # hops=1 needs no scoring


def test_unset_hops_are_two_where_the_backend_scores_prompts_and_one_elsewhere():
    scoring, server = FakeBackend(), FakeBackend(Capabilities(packed_rows=True, scoring="none"))
    assert DEFAULT_HOPS == 2 and resolve_hops(None, scoring) == 2 and resolve_hops(None, server) == 1
    assert resolve_hops(3, server) == 3  # as set (follow_hops then refuses it)
    judged = _judged({0})
    assert follow_hops(judged, PIECES, server, QUESTION) == judged  # unset on a server: the margins' alone, no error
    lifts = [_lift(scoring, [PIECES[0]], PIECES[i]) for i in (1, 3, 4, 5)]
    threshold = sorted(lifts)[2]
    unset = follow_hops(judged, PIECES, scoring, QUESTION, hop_threshold=threshold)
    assert unset == follow_hops(judged, PIECES, scoring, QUESTION, hops=2, hop_threshold=threshold)
    assert [j.index for j in unset if j.hop == 2] == [
        i for i, v in zip((1, 3, 4, 5), lifts, strict=True) if v >= threshold
    ]
