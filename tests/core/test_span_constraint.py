"""The quote matcher of quoted margins (backends/span.py) on its own: what it allows at each step, repeated substrings,
the minimum length, the stop forced at a dead end; and, as a property, that whatever a decoder picks among the allowed
ids is a contiguous span of the source, and that every span of the source can be written. Pure Python: no model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wim_integrations.backends.span import SpanConstraint, is_span

STOP = 0


def walk(constraint: SpanConstraint, picks: list[int]) -> list[int]:
    """Decode by taking, at each step, the allowed id at index pick (mod the number allowed); stop ends it."""
    m = constraint.start()
    out: list[int] = []
    for p in picks:
        allowed = m.allowed_ids([STOP])
        if allowed is None:
            break
        token = allowed[p % len(allowed)]
        if token == STOP:
            break
        m.push(token)
        out.append(token)
    return out


def test_the_first_token_may_be_any_source_token_and_no_stop_yet():
    m = SpanConstraint([5, 6, 7, 5, 8], min_tokens=2).start()
    assert m.allowed_ids([STOP]) == [5, 6, 7, 8]
    assert not m.may_stop and not m.must_stop


def test_a_repeated_substring_keeps_every_occurrence():
    # "5 6" occurs twice, followed by 7 and by 9: both continue it; after "5 6 9" only 1 does.
    m = SpanConstraint([5, 6, 7, 1, 5, 6, 9, 1], min_tokens=1).start()
    m.push(5)
    assert m.continuations() == [6]
    m.push(6)
    assert m.occurrences == [(0, 2), (4, 6)]
    assert m.continuations() == [7, 9]
    m.push(9)
    assert m.occurrences == [(4, 7)]
    assert m.continuations() == [1]


def test_overlapping_occurrences_are_followed_together():
    m = SpanConstraint([3, 3, 3, 4], min_tokens=1).start()
    m.push(3)
    assert m.continuations() == [3, 4]
    m.push(3)
    assert m.occurrences == [(0, 2), (1, 3)]
    assert m.continuations() == [3, 4]
    m.push(3)
    assert m.continuations() == [4]


def test_the_stop_is_allowed_only_from_the_minimum_length():
    m = SpanConstraint([5, 6, 7, 8, 9], min_tokens=3).start()
    for t in (5, 6):
        m.push(t)
        assert STOP not in (m.allowed_ids([STOP]) or [])
    m.push(7)
    assert m.allowed_ids([STOP]) == [STOP, 8]


def test_the_stop_is_forced_at_a_dead_end_even_before_the_minimum_length():
    m = SpanConstraint([5, 6, 7], min_tokens=10).start()
    m.push(6)
    m.push(7)  # the source's end: nothing continues "6 7"
    assert m.must_stop and m.may_stop
    assert m.allowed_ids([STOP]) is None


def test_an_empty_source_ends_the_quote_at_once():
    assert SpanConstraint([], min_tokens=1).start().allowed_ids([STOP]) is None


def test_a_token_that_does_not_continue_the_quote_is_refused():
    m = SpanConstraint([5, 6, 7]).start()
    with pytest.raises(ValueError, match="does not continue"):
        m.push(9)
    m.push(5)
    with pytest.raises(ValueError, match="does not continue"):
        m.push(7)


def test_min_tokens_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        SpanConstraint([1, 2], min_tokens=0)


def test_a_stand_in_may_start_the_quote_only():
    # 50 stands for 5 (say "The" for " The"): it may start the quote where 5 occurs, and nowhere later.
    c = SpanConstraint([5, 6, 7, 5, 8], min_tokens=1, starts={50: [5], 60: [99]})
    assert c.starts == {50: (5,)}  # a stand-in for a token the source lacks is dropped
    m = c.start()
    assert m.allowed_ids([STOP]) == [5, 6, 7, 8, 50]
    m.push(50)
    assert m.occurrences == [(0, 1), (3, 4)] and m.continuations() == [6, 8]
    m.push(6)
    with pytest.raises(ValueError):
        m.push(50)
    assert c.accepts([50, 6, 7]) and c.accepts([5, 8]) and c.accepts([50]) and c.accepts([])
    assert not c.accepts([6, 50]) and not c.accepts([50, 7]) and not c.accepts([60])
    assert not SpanConstraint([5, 6]).accepts([50, 6])


def test_is_span():
    assert is_span([6, 7], [5, 6, 7]) and is_span([], [1]) and is_span([5, 6, 7], [5, 6, 7])
    assert not is_span([5, 7], [5, 6, 7]) and not is_span([7, 5], [5, 6, 7]) and not is_span([1], [])


sources = st.lists(st.integers(1, 6), min_size=0, max_size=40)  # a small alphabet: many repeats


@settings(max_examples=300, deadline=None)
@given(source=sources, picks=st.lists(st.integers(0, 50), max_size=60), min_tokens=st.integers(1, 8))
def test_any_decoding_under_the_constraint_is_a_span_of_the_source(source, picks, min_tokens):
    quote = walk(SpanConstraint(source, min_tokens), picks)
    assert is_span(quote, source) and SpanConstraint(source).accepts(quote)
    # It stopped early only where it could: at the minimum length, or where the source offers nothing more.
    if len(quote) < min(min_tokens, len(picks)):
        m = SpanConstraint(source, min_tokens).start()
        for t in quote:
            m.push(t)
        assert m.must_stop


@settings(max_examples=300, deadline=None)
@given(source=sources.filter(bool), data=st.data())
def test_every_span_of_the_source_can_be_written_and_then_ended(source, data):
    i = data.draw(st.integers(0, len(source) - 1))
    j = data.draw(st.integers(i + 1, len(source)))
    m = SpanConstraint(source, min_tokens=1).start()
    for t in source[i:j]:
        allowed = m.allowed_ids([STOP])
        assert allowed is not None and t in allowed
        m.push(t)
    assert (i, j) in m.occurrences
    assert m.must_stop or STOP in (m.allowed_ids([STOP]) or [])


@settings(max_examples=200, deadline=None)
@given(source=sources, picks=st.lists(st.integers(0, 50), max_size=60))
def test_with_stand_ins_the_rest_of_the_quote_is_a_span_after_what_the_first_stands_for(source, picks):
    starts = {10 + t: [t] for t in range(1, 7)}  # 10 + t stands for t
    c = SpanConstraint(source, 1, starts)
    quote = walk(c, picks)
    assert c.accepts(quote)
    if quote:
        first = quote[0] - 10 if quote[0] >= 10 else quote[0]
        assert is_span([first, *quote[1:]], source)
