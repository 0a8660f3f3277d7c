"""WiM against a real llama.cpp server: answers and events, prefix reuse, and prefix reuse changing nothing."""

from __future__ import annotations

import pytest
from conftest import HARBOR, QUESTION, SERVER_CFG, assert_same_greedy_text, assert_same_run

from wim_integrations import WiM, WiMInputError
from wim_integrations.backends.server import ServerBackend
from wim_integrations.events import AnswerToken, Finished, MarginToken, MarginWritten, SegmentRead
from wim_integrations.textstream import TextDeltas

# On the embedded model served by a real llama-server: run in CI (job 1), deselected by -m "not slow".
pytestmark = pytest.mark.slow


def _margin_requests(backend: ServerBackend) -> list:
    return [r for r in backend.requests if r.kind in ("generate", "row") and r.prefix_tokens > 0]


def test_answers_with_events_in_reading_order(server_wim):
    events = list(server_wim.stream(HARBOR, QUESTION))
    result = events[-1].result
    assert isinstance(events[-1], Finished)
    n = result.n_segments
    assert n >= 3 and result.segments_read == n and len(result.margins) == n
    reads = [e.segment_index for e in events if isinstance(e, SegmentRead)]
    written = [e.segment_index for e in events if isinstance(e, MarginWritten)]
    assert reads == written == list(range(n))
    for m in result.margins:  # each margin streamed token by token before it was written
        streamed = "".join(e.text for e in events if isinstance(e, MarginToken) and e.segment_index == m.segment_index)
        assert streamed.strip() == m.text
    assert "".join(e.text for e in events if isinstance(e, AnswerToken)).strip() == result.answer
    assert "Marlowe" in result.answer  # greedy on the pinned llama.cpp build and model
    # llama.cpp offers no prompt log-probabilities: the default relevance falls back to lexical scores.
    assert server_wim.plan(HARBOR, QUESTION).config.classification == "lexical"


def test_margin_requests_find_their_prefix_in_the_servers_cache(server_wim):
    result = server_wim.run(HARBOR, QUESTION)
    backend = server_wim.backend
    margins = _margin_requests(backend)
    # Every margin and the answer, those closed early by the stop rule too (llama.cpp reports per chunk).
    assert len(margins) == result.n_segments + 1
    assert any(m.n_tokens < SERVER_CFG.margin_max_new_tokens for m in result.margins)
    for r in margins:
        assert r.cached_tokens is not None, "llama.cpp reports cached prompt tokens (timings.cache_n)"
        assert r.cached_tokens >= 0.9 * r.prefix_tokens, r
    # The context is computed once (warm-ups), not once per request.
    computed = sum(r.computed_tokens or 0 for r in backend.requests)
    cold = sum(r.prompt_tokens for r in backend.requests if r.kind != "warm")
    assert computed < 0.5 * cold


def test_prefix_reuse_gives_the_same_greedy_tokens_as_cold_requests(server_wim, llama_server, served_model):
    llama_server.erase_slots()
    warm = server_wim.run(HARBOR, QUESTION)
    cold_backend = ServerBackend(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", reuse_prefix=False)
    cold = WiM(cold_backend, config=SERVER_CFG).run(HARBOR, QUESTION)
    assert all(r.kind != "warm" for r in cold_backend.requests)
    assert all(r.cached_tokens == 0 for r in cold_backend.requests if r.cached_tokens is not None)
    # Cold requests compute each prompt in one go, warm ones reuse prefixes computed in other batches: equal up to
    # llama.cpp's float noise (conftest.assert_same_greedy_text).
    assert_same_run(llama_server.url, server_wim, server_wim.plan(HARBOR, QUESTION), warm, cold)


def test_the_same_requests_in_the_same_order_from_an_empty_slot_give_the_same_tokens(llama_server, served_model):
    """What llama.cpp does promise, asserted strictly: one request at a time (so the slot sees them in one order),
    each run from an empty slot, gives the same greedy margins and answer."""
    backend = ServerBackend(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", max_concurrency=1)
    wim = WiM(backend, config=SERVER_CFG, document_cache=None)
    runs = []
    for _ in range(2):
        llama_server.erase_slots()
        result = wim.run(HARBOR, QUESTION)
        runs.append(([m.text for m in result.margins], result.answer))
    backend.close()
    assert runs[0] == runs[1]


def test_margin_equals_a_plain_request_for_the_same_tokens(server_wim, llama_server):
    """The margin written from the client-side cache equals one completion of the exact tokens it stands for."""
    plan = server_wim.plan(HARBOR, QUESTION)
    llama_server.erase_slots()
    result = server_wim.run(HARBOR, QUESTION)
    b = server_wim.backend
    k = 1
    ids = plan.head_ids + [t for s in plan.context.segments[: k + 1] for t in s.token_ids] + plan.margin_prompt_ids
    llama_server.erase_slots()
    import httpx

    reply = httpx.post(
        f"{llama_server.url}/completion",
        json=b.profile.generate(ids, SERVER_CFG.margin_max_new_tokens, SERVER_CFG.sampling, [], False, 0)[1]
        | {"stream": False},
        timeout=120,
    ).json()
    deltas = TextDeltas.for_backend(b)
    for t in reply["tokens"]:
        if t in b.stop_ids:
            break
        deltas.push(t)
    deltas.flush()
    # One request of the whole prompt vs warm-up + margin: other batches, so equal up to a near-tie (see conftest).
    assert_same_greedy_text(
        llama_server.url, ids, result.margins[k].text, deltas.text.strip(), SERVER_CFG.margin_max_new_tokens
    )


def test_a_second_question_on_the_same_document_works(server_wim):
    first = server_wim.run(HARBOR, QUESTION)
    second = server_wim.run(HARBOR, "What was damaged in the storm?")
    assert first.n_segments == second.n_segments and second.answer


def test_cancel_and_answer_now_over_the_server(server_wim):
    stream = server_wim.stream(HARBOR, QUESTION)
    for event in stream:
        if isinstance(event, MarginToken):
            stream.cancel()
    assert stream.result is None
    stream = server_wim.stream(HARBOR, QUESTION)
    for event in stream:
        if isinstance(event, MarginWritten):
            stream.answer_now()
    assert stream.result is not None and stream.result.segments_read == 1 and stream.result.answer
    assert server_wim.run(HARBOR, QUESTION).segments_read > 1  # the backend is usable after both


def test_scored_modes_that_need_prompt_logprobs_are_refused_before_any_request(server_wim):
    before = len(server_wim.backend.requests)
    with pytest.raises(WiMInputError, match="lexical"):
        server_wim.stream(HARBOR, QUESTION, classification="segment_pmi")
    with pytest.raises(WiMInputError, match="lexical"):
        server_wim.stream(HARBOR, QUESTION, classification="pmi")
    assert len(server_wim.backend.requests) == before


def test_same_model_classification_over_the_server(server_wim):
    result = server_wim.run(HARBOR, QUESTION, classification="same_model", classifier_max_new_tokens=4)
    assert all(m.verdict in ("yes", "no", "unknown") and m.classifier_output is not None for m in result.margins)


def test_langchain_and_llamaindex_read_through_the_server(llama_server, served_model):
    from llama_index.core.schema import NodeWithScore, TextNode

    from wim_integrations import WiMChain
    from wim_integrations.llamaindex import WiMSynthesizer

    chain = WiMChain.from_server(
        llama_server.url, tokenizer=served_model[1], engine="llama.cpp", config=SERVER_CFG, return_margins=True
    )
    out = chain.invoke({"question": QUESTION, "context": HARBOR})
    assert out["answer"] and len(out["margins"]) >= 3
    synth = WiMSynthesizer(wim=chain.wim)
    nodes = [NodeWithScore(node=TextNode(text=part)) for part in HARBOR.split("\n\n") if part.strip()]
    response = synth.synthesize(QUESTION, nodes)
    assert str(response) and response.metadata["wim"]["margins"]


def test_the_cli_reads_through_the_server(llama_server, served_model):
    import io
    from pathlib import Path

    from wim_integrations.frontends.cli import main

    out, err = io.StringIO(), io.StringIO()
    harbor = str(Path(__file__).parents[2] / "examples" / "harbor_report.txt")
    args = ["ask", "-f", harbor, "-q", QUESTION, "--server", llama_server.url, "--tokenizer", str(served_model[1])]
    args += ["--segment-tokens", "256", "--margin-tokens", "24", "--answer-tokens", "24", "--quiet"]
    assert main(args, stdout=out, stderr=err) == 0, err.getvalue()
    assert "Marlowe" in out.getvalue() and "llama.cpp server" in err.getvalue()
    assert main(["ask", "-f", harbor, "-q", QUESTION, "--server", llama_server.url], stdout=out, stderr=err) == 2
    assert "--server needs --tokenizer" in err.getvalue()
