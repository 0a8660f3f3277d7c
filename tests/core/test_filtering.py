"""Judging documents by their margins (filtering.py): relevance, best score, top_n and the order kept."""

from __future__ import annotations

import pytest

from wim_integrations import DocumentSpan, Margin, WiMInputError
from wim_integrations.filtering import judge_documents, kept_documents


def _margin(segment: int, docs: list[int], relevant: bool, score: float | None) -> Margin:
    return Margin(
        segment_index=segment,
        text=f"note {segment}",
        relevant=relevant,
        verdict="yes" if relevant else "no",
        score=score,
        char_span=(0, 1),
        token_span=(0, 1),
        documents=[DocumentSpan(doc_index=d, start_char=0, end_char=1) for d in docs],
        n_tokens=1,
        seconds=0.0,
    )


MARGINS = [
    _margin(0, [0], True, 0.3),
    _margin(1, [1], False, 0.1),  # doc 1: nothing relevant
    _margin(2, [2], True, 0.2),  # doc 2 over two segments: its best relevant score counts
    _margin(3, [2], True, 0.9),
    _margin(4, [3], True, 0.5),
    _margin(5, [3, 4], False, 2.0),  # an irrelevant margin's score counts for nothing
]


def test_each_document_is_judged_by_the_margins_on_it():
    judged = judge_documents(MARGINS, 6)
    assert [j.relevant for j in judged] == [True, False, True, True, False, False]
    assert [j.score for j in judged] == [0.3, None, 0.9, 0.5, None, None]
    assert [m.segment_index for m in judged[2].relevant_margins] == [2, 3]
    assert [m.segment_index for m in judged[3].margins] == [4, 5] and judged[5].margins == ()


@pytest.mark.parametrize(
    "top_n, order, expected",
    [
        (None, "retrieval", [0, 2, 3]),
        (None, "score", [2, 3, 0]),
        (2, "retrieval", [2, 3]),
        (2, "score", [2, 3]),
        (1, "retrieval", [2]),
        (10, "retrieval", [0, 2, 3]),  # top_n never adds an irrelevant document
    ],
)
def test_top_n_and_kept_order(top_n, order, expected):
    kept = kept_documents(judge_documents(MARGINS, 6), top_n=top_n, kept_order=order)
    assert [j.index for j in kept] == expected


def test_without_scores_ties_keep_the_given_order():
    margins = [_margin(i, [i], True, None) for i in range(4)]
    judged = judge_documents(margins, 4)
    assert [j.index for j in kept_documents(judged, top_n=2)] == [0, 1]
    assert [j.index for j in kept_documents(judged[::-1], top_n=2, kept_order="score")] == [3, 2]


@pytest.mark.parametrize("top_n, order", [(0, "retrieval"), (-1, "score"), (1.5, "score"), (True, "score"), (2, "x")])
def test_bad_settings_are_refused(top_n, order):
    with pytest.raises(WiMInputError, match=r"top_n|kept_order"):
        kept_documents([], top_n=top_n, kept_order=order)
