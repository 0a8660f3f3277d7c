"""The segmenter drops and duplicates nothing, respects the budget and cuts where a reader would pause."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wim_integrations import InputDocument, WiMInputError
from wim_integrations.reading.segmenter import segment_context

WORDS = ["harbor", "keeper", "Ines", "4417", "東京", "naïve", "🙂", "the", "a", "{question}", "<|im_end|>"]
word = st.sampled_from(WORDS) | st.text(min_size=1, max_size=8)
sentence = st.lists(word, min_size=1, max_size=12).map(" ".join).map(lambda s: s + st_end(s))


def st_end(s: str) -> str:
    return "." if len(s) % 3 else "?"


text_strategy = st.lists(
    st.tuples(sentence, st.sampled_from([" ", "  ", "\n", "\n\n", "\n \n\t", ""])), min_size=1, max_size=40
).map(lambda parts: "".join(s + sep for s, sep in parts))


@pytest.fixture(scope="module")
def tokenizer(tiny_backends):
    return tiny_backends["llama"].tokens  # the backend's tokenizer side (encode_with_offsets)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_strategy, budget=st.integers(min_value=1, max_value=60))
def test_segments_tile_the_input_exactly(tokenizer, text, budget):
    if not text.strip():
        with pytest.raises(WiMInputError):
            segment_context(tokenizer, text, budget)
        return
    ctx = segment_context(tokenizer, text, budget)
    assert "".join(s.text for s in ctx.segments) == text
    whole = tokenizer.encode_text(text)
    assert [t for s in ctx.segments for t in s.token_ids] == list(whole)
    pos = tok = 0
    for k, s in enumerate(ctx.segments):
        assert s.index == k and 0 < s.n_tokens <= budget
        assert (s.start_char, s.start_token) == (pos, tok)
        assert text[s.start_char : s.end_char] == s.text
        pos, tok = s.end_char, s.end_token
    assert (pos, tok) == (len(text), len(whole))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(text_strategy.filter(str.strip), min_size=1, max_size=5), budget=st.integers(5, 80))
def test_document_spans_point_back_into_their_documents(tokenizer, docs, budget):
    inputs = [InputDocument(t, id=f"d{i}", metadata={"n": i}) for i, t in enumerate(docs)]
    ctx = segment_context(tokenizer, inputs, budget)
    covered: dict[int, list[tuple[int, int]]] = {}
    for seg in ctx.segments:
        for span in seg.documents:
            assert span.doc_id == f"d{span.doc_index}" and span.metadata == {"n": span.doc_index}
            start = ctx.doc_starts[span.doc_index]
            assert ctx.text[start + span.start_char : start + span.end_char] in seg.text
            covered.setdefault(span.doc_index, []).append((span.start_char, span.end_char))
    for i, doc in enumerate(docs):  # every character of every document lies in exactly one span
        spans = sorted(covered[i])
        assert spans[0][0] == 0 and spans[-1][1] == len(doc)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Stripped documents: a token of whitespace running from one document across the separator into the next cannot go
# wholly to either side. Budgets from 12: below the separator plus one character's byte tokens (2 + 4 here) a
# document's first character cannot share a segment with the separator carried before it, so a segment of the
# separator alone is unavoidable (found at budget 5 with a 4-byte character); the planner never segments below the
# margin prompt's length (about a hundred tokens).
@given(docs=st.lists(text_strategy.map(str.strip).filter(bool), min_size=1, max_size=6), budget=st.integers(12, 200))
@example(docs=["harbor?", "\U00010000."], budget=12)  # the 4-byte character above, at the smallest budget
def test_unmerged_documents_each_start_a_segment(tokenizer, docs, budget):
    inputs = [InputDocument(t, id=f"d{i}") for i, t in enumerate(docs)]
    ctx = segment_context(tokenizer, inputs, budget, merge_documents=False)
    assert "".join(s.text for s in ctx.segments) == ctx.text  # still nothing dropped or duplicated
    assert [t for s in ctx.segments for t in s.token_ids] == list(ctx.token_ids)
    assert all(0 < s.n_tokens <= budget for s in ctx.segments)
    firsts = {}
    for seg in ctx.segments:
        assert len(seg.documents) == 1  # no segment spans two documents
        firsts.setdefault(seg.documents[0].doc_index, seg.documents[0])
    assert sorted(firsts) == list(range(len(docs)))
    assert all(span.start_char == 0 for span in firsts.values())  # each document's first segment opens it


def test_short_documents_are_merged_unless_asked(tokenizer):
    docs = [f"Note {i}: the keeper lit lamp {i}." for i in range(5)]
    merged = segment_context(tokenizer, docs, 200)
    separate = segment_context(tokenizer, docs, 200, merge_documents=False)
    assert len(merged.segments) == 1 and len(merged.segments[0].documents) == 5
    assert [[d.doc_index for d in s.documents] for s in separate.segments] == [[i] for i in range(5)]
    long_doc = ["The keeper lit the lamp. The boats came home. " * 12, "Short one."]
    split = segment_context(tokenizer, long_doc, 40, merge_documents=False)
    assert [s.documents[0].doc_index for s in split.segments][-1] == 1 and len(split.segments) > 2


def test_cuts_prefer_paragraphs_then_sentences(tokenizer):
    para = "The keeper lit the lamp. The boats came home. The night was calm and long."
    text = "\n\n".join([para] * 6)
    ctx = segment_context(tokenizer, text, 60)
    assert len(ctx.segments) > 1
    for seg in ctx.segments[:-1]:
        assert seg.text.rstrip(" ").endswith(("\n\n", ".")), seg.text
    one_paragraph = "The keeper lit the lamp. The boats came home after a long day at sea. " * 8
    for seg in segment_context(tokenizer, one_paragraph, 40).segments[:-1]:
        assert seg.text.rstrip().endswith("."), seg.text  # sentence ends, never mid-sentence


def test_a_sentence_longer_than_the_budget_is_split_by_tokens(tokenizer):
    text = "word " * 200  # no sentence boundary at all
    ctx = segment_context(tokenizer, text, 16)
    assert all(s.n_tokens <= 16 for s in ctx.segments) and "".join(s.text for s in ctx.segments) == text


def test_special_token_strings_in_user_text_stay_plain_text(tokenizer):
    ctx = segment_context(tokenizer, "Ignore this <|im_end|> marker.", 50)
    special = tokenizer.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert special not in ctx.token_ids


@pytest.mark.parametrize(
    "bad, message",
    [
        ("", "empty"),
        ("  \n\t ", "empty"),
        (b"bytes", "string or a list"),
        (42, "string or a list"),
        ([], "empty list"),
        (["ok", 3], "context item 1"),
    ],
)
def test_bad_contexts_are_rejected_with_the_fix(tokenizer, bad, message):
    with pytest.raises(WiMInputError, match=message):
        segment_context(tokenizer, bad, 50)
