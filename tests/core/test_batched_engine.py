"""Batched margins and classification give the results of the step-by-step loop, with the same event contract."""

from __future__ import annotations

import pytest

from wim_integrations import WiM, WiMConfig
from wim_integrations.events import MarginToken, MarginWritten, SegmentRead

DOC = " ".join(
    [
        "The quick brown fox jumps over the lazy dog. Where is Mary? Mary went to the kitchen.",
        "A long document is split into segments. After each segment the model writes a margin note.",
        "Question: what is the secret code? Answer: the secret code is 4417.",
        "Paris is the capital of France. Berlin is the capital of Germany. Numbers 0 1 2 3 4 5 6 7 8 9.",
        "Read the text carefully, part by part; then answer the question using the margin notes.",
    ]
    * 4
)
QUESTION = "What is the secret code?"
CFG = WiMConfig(segment_tokens=120, margin_max_new_tokens=10, answer_max_new_tokens=10, classifier_max_new_tokens=4)


def _summary(result):
    return (
        result.answer,
        [(m.segment_index, m.text, m.verdict, m.classifier_output, m.n_tokens) for m in result.margins],
        result.segments_read,
        result.tokens.model_dump(),
    )


@pytest.mark.parametrize("mode", ["same_model", "inline"])
def test_batched_equals_sequential(tiny_backend, mode):
    wim = WiM(tiny_backend, config=CFG.with_updates(classification=mode), document_cache=None)
    sequential = wim.run(DOC, QUESTION)
    assert sequential.n_segments >= 4
    for size in (3, 64):
        batched = wim.run(DOC, QUESTION, margin_batch_size=size)
        assert _summary(batched) == _summary(sequential)
        assert batched.timings.context_cache == "off"


def _per_segment_stream(events):
    """(segment, streamed margin text) per margin written, checking the event contract: a segment's margin tokens
    come after its SegmentRead and before its MarginWritten; segments are read, and margins written, in order."""
    read, written, streamed = [], [], {}
    for e in events:
        if isinstance(e, SegmentRead):
            assert e.segment_index == len(read), "segments are read in order"
            read.append(e.segment_index)
            streamed[e.segment_index] = ""
        elif isinstance(e, MarginToken):
            assert e.segment_index in read and e.segment_index not in written
            streamed[e.segment_index] += e.text
        elif isinstance(e, MarginWritten):
            assert e.segment_index == len(written), "margins are written in order"
            assert e.segment_index in read
            written.append(e.segment_index)
    return [(i, streamed[i]) for i in written]


def test_batched_events_keep_per_segment_order(tiny_backends):
    wim = WiM(tiny_backends["qwen2"], config=CFG.with_updates(classification="none"))
    sequential = list(wim.stream(DOC, QUESTION))
    batched = list(wim.stream(DOC, QUESTION, margin_batch_size=3))
    got = _per_segment_stream(batched)
    assert [i for i, _ in got] == list(range(batched[-1].result.n_segments))
    assert got == _per_segment_stream(sequential)
    assert [type(e) for e in batched if not isinstance(e, (SegmentRead, MarginToken, MarginWritten))] == [
        type(e) for e in sequential if not isinstance(e, (SegmentRead, MarginToken, MarginWritten))
    ]


def test_every_margin_of_a_group_streams_live(tiny_backends):
    """Margins decoded together stream together: each segment's first tokens arrive before any margin of the group is
    written, and each SegmentRead as its segment is read, before the group's decoding."""
    wim = WiM(tiny_backends["llama"], config=CFG.with_updates(classification="none", margin_stop="eos"))
    events = list(wim.stream(DOC, QUESTION, margin_batch_size=3))
    kinds = [(type(e).__name__, getattr(e, "segment_index", None)) for e in events]
    first_written = kinds.index(("MarginWritten", 0))
    assert {("SegmentRead", i) for i in range(3)} <= set(kinds[:first_written])
    tokens_before = {i for name, i in kinds[:first_written] if name == "MarginToken"}
    assert tokens_before == {0, 1, 2}
    first_token = kinds.index(("MarginToken", 0))
    assert kinds.index(("SegmentRead", 2)) < first_token < kinds.index(("MarginToken", 2))


def _answer_now_at(wim, batch_size, event_type, segment_index):
    """The result of a run told to `answer_now` at the `event_type` event of segment `segment_index`."""
    stream = wim.stream(DOC, QUESTION, margin_batch_size=batch_size)
    for e in stream:
        if isinstance(e, event_type) and e.segment_index == segment_index:
            stream.answer_now()
    return stream.result


def test_answer_now_in_batched_mode_answers_from_segments_read(tiny_backends):
    wim = WiM(tiny_backends["llama"], config=CFG, document_cache=None)
    seq, bat = _answer_now_at(wim, 1, MarginWritten, 0), _answer_now_at(wim, 2, MarginWritten, 0)
    assert seq.stopped_early and bat.stopped_early
    # The batch of two finished its group: same answer as the loop would give after two segments.
    assert bat.segments_read == 2 and len(bat.margins) == 2
    assert _summary(_answer_now_at(wim, 1, MarginWritten, 1)) == _summary(bat)
    assert seq.segments_read == 1


def test_sliding_window_backend_falls_back_to_sequential(tiny_backends, monkeypatch):
    b = tiny_backends["phi3"]
    wim = WiM(b, config=CFG.with_updates(classification="none"))
    want = wim.run(DOC, QUESTION)
    monkeypatch.setattr(type(b), "supports_packed", property(lambda self: False))
    monkeypatch.setattr(type(b), "generate_packed", None)  # would fail if called
    assert _summary(wim.run(DOC, QUESTION, margin_batch_size=4)) == _summary(want)


def test_answer_now_while_a_group_is_read_writes_the_margins_read_before_it(tiny_backends):
    """As in the step-by-step loop: the segment answer_now came after is read but gets no margin; those before do."""
    wim = WiM(tiny_backends["qwen2"], config=CFG.with_updates(classification="none"), document_cache=None)
    grouped, step = _answer_now_at(wim, 3, SegmentRead, 1), _answer_now_at(wim, 1, SegmentRead, 1)
    assert grouped.segments_read == step.segments_read == 2
    assert [m.segment_index for m in grouped.margins] == [0]
    assert _summary(grouped) == _summary(step)
