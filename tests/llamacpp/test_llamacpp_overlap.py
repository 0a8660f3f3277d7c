"""The paper's overlap on llama.cpp in process: margins decode in the batches that read the next segments.

Proven against plain recomputation (each margin and the answer equal greedy generation on their own tokens from a
fresh cache, near-ties aside) and against grouped decoding; the events keep their order guarantees; the rows really
run while the document is read (a margin finishes before the last segment is read)."""

from __future__ import annotations

import gc

import pytest
from helpers import SAMPLE
from llama_cpp_agreement import (
    assert_run_equals_plain_generation_inproc,
    assert_same_greedy_text_inproc,
    assert_same_run_inproc,
)

from wim_integrations import WiM, WiMConfig, WiMInputError
from wim_integrations.backends.base import GenerationRequest, PackedRequest, PackedRow
from wim_integrations.events import SegmentRead

pytestmark = pytest.mark.slow

CFG = WiMConfig(
    segment_tokens=200, margin_max_new_tokens=16, answer_max_new_tokens=16, classification="none", margin_stop="eos"
)
Q = "Who keeps the lighthouse?"


@pytest.fixture(scope="module")
def wim(llamacpp_backend):
    return WiM(llamacpp_backend, config=CFG, document_cache=None)


@pytest.mark.parametrize("chunk", [16, 64])
def test_overlapped_margins_and_answer_equal_plain_generation(wim, chunk):
    plan = wim.plan(SAMPLE, Q)
    assert plan.n_segments >= 3
    result = wim.run(SAMPLE, Q, overlap=True, overlap_chunk_tokens=chunk)
    assert len(result.margins) == plan.n_segments
    assert_run_equals_plain_generation_inproc(wim, plan, result)


def test_overlapped_run_equals_the_grouped_one_with_judging(llamacpp_backend):
    wim = WiM(llamacpp_backend, config=CFG.with_updates(classification="segment_pmi", margin_stop="sentence"))
    grouped = wim.run(SAMPLE, Q, overlap=False, reuse_document_cache=False)
    overlapped = wim.run(SAMPLE, Q, overlap=True, reuse_document_cache=False)
    assert_same_run_inproc(wim.backend, wim, wim.plan(SAMPLE, Q), grouped, overlapped)
    if [m.text for m in grouped.margins] == [m.text for m in overlapped.margins]:
        for g, o in zip(grouped.margins, overlapped.margins, strict=True):
            assert o.score == pytest.approx(g.score, abs=0.05)  # scored from the same tokens, in chunked caches


def test_margins_stream_while_the_document_is_still_read(wim):
    events = list(wim.stream(SAMPLE, Q, overlap=True, overlap_chunk_tokens=16))
    n = events[0].n_segments
    order = [(e.type, getattr(e, "segment_index", None)) for e in events]
    first_margin_done = max(i for i, (t, k) in enumerate(order) if t == "margin_token" and k == 0)
    assert first_margin_done < order.index(("segment_read", n - 1))  # written during a later segment's prefill
    for k in range(n):  # a margin streams after its own segment is read; its MarginWritten follows its tokens
        read = order.index(("segment_read", k))
        tokens = [i for i, (t, j) in enumerate(order) if t == "margin_token" and j == k]
        assert tokens and min(tokens) > read
        assert order.index(("margin_written", k)) > max(tokens)
    written = [k for t, k in order if t == "margin_written"]
    assert written == list(range(n))
    result = events[-1].result
    for k in range(n):
        streamed = "".join(e.text for e in events if e.type == "margin_token" and e.segment_index == k)
        assert streamed.strip() == result.margins[k].text


def test_answer_now_during_an_overlapped_read_answers_from_what_was_read(wim):
    stream = wim.stream(SAMPLE, Q, overlap=True, overlap_chunk_tokens=16)
    for e in stream:
        if isinstance(e, SegmentRead) and e.segment_index == 1:
            stream.answer_now()
    result = stream.result
    assert result.stopped_early and result.segments_read == 2
    assert [m.segment_index for m in result.margins] == [0]  # as the grouped loop: no margin after answer_now
    grouped = wim.stream(SAMPLE, Q, overlap=False)
    for e in grouped:
        if isinstance(e, SegmentRead) and e.segment_index == 1:
            grouped.answer_now()
    assert_same_run_inproc(wim.backend, wim, wim.plan(SAMPLE, Q), grouped.result, result)


def test_a_cancel_during_an_overlapped_read_frees_every_row(wim):
    b = wim.backend
    gc.collect()  # caches of earlier tests hold sequences until collected
    b._reclaim()
    free_before = len(b._free_seqs)
    stream = wim.stream(SAMPLE, Q, overlap=True, overlap_chunk_tokens=16)
    for e in stream:
        if e.type == "margin_token":
            stream.cancel()
    del stream
    gc.collect()
    b._reclaim()
    assert len(b._free_seqs) == free_before
    after = wim.run(SAMPLE, Q, overlap=True)  # the backend still reads afterwards, every margin written
    assert len(after.margins) == after.segments_read == wim.plan(SAMPLE, Q).n_segments


def test_rows_stepped_with_prefill_equal_rows_decoded_after_it(llamacpp_backend):
    """Backend level: a row decoding while the cache is prefilled further gives the tokens it gives when decoded
    after the prefill (packed), and the cache ends up holding every prefilled token."""
    b = llamacpp_backend
    head = b.encode_text("The keeper of the lighthouse is Ada Lind. " * 3)
    more = b.encode_text(" The sea was calm." * 8)
    prompt = b.encode_text(" Who keeps the lighthouse? Answer:")
    after = b.new_cache()
    b.prefill(after, head)
    want = [t for step in b.generate_packed(after, PackedRequest([PackedRow(len(head), prompt)], 12)) for _, t in step]
    cache = b.new_cache()
    b.prefill(cache, head)
    got: list[int] = []
    with b.open_rows(cache, 12, CFG.sampling) as rows:
        assert rows.add(PackedRow(len(head), prompt)) == 0
        for k in range(0, len(more), 4):
            got += [t for _, t in rows.step(more[k : k + 4])]
        while rows.running:
            got += [t for _, t in rows.step()]
    assert b.cache_length(cache) == len(head) + len(more)
    assert_same_greedy_text_inproc(b, head + prompt, b.decode(got), b.decode(want), 12)
    b.prefill(after, more)  # the chunked cache predicts what the one read in one go does
    tail = b.encode_text(" Who keeps it?")
    assert_same_greedy_text_inproc(
        b,
        head + more + tail,
        plain_from(b, cache, tail),
        plain_from(b, after, tail),
        8,
    )


def plain_from(backend, cache, ids) -> str:
    return backend.decode(list(backend.generate(cache, GenerationRequest(ids, 8))))


def test_a_row_cannot_start_past_the_cache(llamacpp_backend):
    b = llamacpp_backend
    cache = b.new_cache()
    b.prefill(cache, b.encode_text("Some text."))
    with b.open_rows(cache, 4, CFG.sampling) as rows, pytest.raises(ValueError, match="outside the cache"):
        rows.add(PackedRow(b.cache_length(cache) + 1, [1]))


def test_overlap_is_refused_where_the_backend_cannot(tiny_backends):
    with pytest.raises(WiMInputError, match="overlap=True"):
        WiM(tiny_backends["llama"], config=CFG.with_updates(overlap=True))
    wim = WiM(tiny_backends["llama"], config=CFG)
    with pytest.raises(WiMInputError, match="overlap=True"):
        wim.run(SAMPLE, Q, overlap=True)
