"""The vLLM, SGLang and plain OpenAI profiles against fake servers (tests/server/fake_engines.py) that speak those
engines' wire formats in front of a deterministic toy model: a WiM run over HTTP equals the same run in process, the
margins of a group are requested together and find their prefix in the server's cache, relevance is scored from
prompt log-probabilities, sampling values are sent explicitly, and a tokenizer mismatch is refused. Fast: no GPU, no
llama-server, no embedded model (the llama.cpp profile is tested against a real server in test_llama_server.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import HARBOR, QUESTION
from fake_engines import FakeEngine, FakeSGLang, FakeVLLM, ReferenceBackend

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.server import ServerBackend
from wim_integrations.backends.server_profiles import PROFILES
from wim_integrations.config import SamplingConfig
from wim_integrations.errors import ServerMismatchError, WiMInputError
from wim_integrations.events import WiMResult

ENGINES: dict[str, type[FakeEngine]] = {"vllm": FakeVLLM, "sglang": FakeSGLang}
GENERATE_PATH = {"vllm": "/v1/completions", "sglang": "/generate"}
# HARBOR is ~2500 tokens of the tiny tokenizer: 5-6 segments.
# Margins run to their budget (no stop rule): a request the client closes early reports no cache statistics.
BUDGETS: dict[str, Any] = dict(
    segment_tokens=500, margin_max_new_tokens=10, answer_max_new_tokens=16, margin_stop="eos"
)
CFG = WiMConfig(**BUDGETS, classification="none")
SAMPLED = SamplingConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3)


@pytest.fixture(scope="module")
def tokenizer(tiny_backends):
    return tiny_backends["llama"].tokenizer


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, tokenizer) -> Iterator[FakeEngine]:
    with ENGINES[request.param](tokenizer) as e:
        yield e


@pytest.fixture
def connect(tokenizer) -> Iterator[Callable[..., ServerBackend]]:
    """connect(engine, kind=engine.kind): a ServerBackend on a fake engine, closed after the test."""
    backends: list[ServerBackend] = []

    def backend(engine: FakeEngine, kind: str | None = None) -> ServerBackend:
        b = ServerBackend(engine.url, tokenizer=tokenizer, engine=kind or engine.kind, max_retries=0, timeout=30)
        backends.append(b)
        return b

    yield backend
    for b in backends:
        b.close()


def _reference(tokenizer, kind: str, config: WiMConfig = CFG, **overrides: Any) -> WiMResult:
    """The same run in process, on a backend that can do what the engine's profile says it can."""
    backend = ReferenceBackend(tokenizer, PROFILES[kind].capabilities, max_context_tokens=8192)
    return WiM(backend, config=config).run(HARBOR, QUESTION, **overrides)


def _texts(result: WiMResult) -> list[str]:
    return [m.text for m in result.margins]


def test_the_engines_are_reached(engine: FakeEngine, connect) -> None:
    """vLLM and SGLang answer GET /health with 200 and an empty body (not JSON)."""
    backend = connect(engine)
    assert backend.capabilities.scoring == "rows" and backend.capabilities.packed_rows


@pytest.mark.parametrize(
    "kind",
    [
        "vllm",
        "sglang",
    ],
)
def test_the_served_window_is_read(kind: str, tokenizer, connect) -> None:
    with ENGINES[kind](tokenizer, context_window=4096) as engine:
        backend = connect(engine)
        assert backend.max_context_tokens == 4096


@pytest.mark.parametrize("batch", [1, 3])
def test_a_run_over_the_server_equals_the_run_in_process(engine: FakeEngine, tokenizer, connect, batch: int) -> None:
    backend = connect(engine)
    result = WiM(backend, config=CFG).run(HARBOR, QUESTION, margin_batch_size=batch)
    expected = _reference(tokenizer, engine.kind, margin_batch_size=batch)
    assert result.n_segments == expected.n_segments >= 4
    assert _texts(result) == _texts(expected)
    assert sum(bool(t) for t in _texts(result)) >= 3 and len(set(_texts(result))) > 1
    assert result.answer == expected.answer and result.answer
    assert not engine.unknown, f"fields the {engine.kind} server does not know: {engine.unknown}"
    kinds = {r.kind for r in backend.requests}
    assert kinds == ({"warm", "generate"} if batch == 1 else {"warm", "row", "generate"})


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_the_margins_of_a_group_are_requested_together_and_find_their_prefix_cached(
    kind: str, tokenizer, connect
) -> None:
    # A few milliseconds per streamed token, so that requests sent together are seen in flight together; and, so that
    # a busy machine cannot finish one before the next connects, a stream waits after its first token (at most 5 s)
    # until a second request is in flight, until that has been seen once. Requests sent one after another never are.
    with ENGINES[kind](tokenizer, token_delay=0.004) as engine:

        def wait_for_company(body: dict[str, Any], n: int) -> None:
            if n != 1:
                return
            deadline = time.monotonic() + 5
            while engine.max_in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.002)

        engine.before_event = wait_for_company
        backend = connect(engine)
        wim = WiM(backend, config=CFG)
        result = wim.run(HARBOR, QUESTION, margin_batch_size=3)
        assert engine.max_in_flight > 1
        engine.before_event = None
        rows = [r for r in backend.requests if r.kind == "row"]
        assert len(rows) == result.n_segments
        for r in rows:  # the whole prefix, but for a last partial block (vLLM caches whole blocks of 16 tokens)
            assert r.cached_tokens is not None and r.cached_tokens >= _whole_blocks(engine, r.prefix_tokens) > 0, r
        # The context is computed once (by the warm-ups), not once per request.
        computed = sum(r.prompt_tokens - (r.cached_tokens or 0) for r in backend.requests)
        assert computed < 0.5 * sum(r.prompt_tokens for r in backend.requests if r.kind != "warm")

        backend.requests.clear()
        engine.reset_counts()
        wim.run(HARBOR, "What was damaged in the storm?", margin_batch_size=1)
        assert engine.max_in_flight == 1  # one margin after another
        margins = [r for r in backend.requests if r.kind == "generate"]
        assert len(margins) == result.n_segments + 1  # and the answer
        for r in margins:
            assert r.cached_tokens is not None and r.cached_tokens >= _whole_blocks(engine, r.prefix_tokens) > 0, r


def test_overlap_warms_each_margin_prefix_in_turn_and_equals_the_run_in_process(
    engine: FakeEngine, tokenizer, connect
) -> None:
    """overlap=True (vLLM, SGLang): a warm-up per segment instead of one per group, each margin request sent once its
    own prefix is warm; the margins and answer are the in-process run's."""
    backend = connect(engine)
    result = WiM(backend, config=CFG).run(HARBOR, QUESTION, margin_batch_size=3, overlap=True)
    expected = _reference(tokenizer, engine.kind, margin_batch_size=3)
    assert _texts(result) == _texts(expected) and result.answer == expected.answer
    warms = [r for r in backend.requests if r.kind == "warm"]
    rows = [r for r in backend.requests if r.kind == "row"]
    assert len(warms) == len(rows) == result.n_segments
    assert [w.prompt_tokens for w in warms] == sorted({r.prefix_tokens for r in rows})
    for r in rows:
        assert r.cached_tokens is not None and r.cached_tokens >= _whole_blocks(engine, r.prefix_tokens) > 0, r


def test_overlap_is_refused_on_a_server_that_does_not_declare_it(tokenizer) -> None:
    backend = ServerBackend("http://127.0.0.1:9", tokenizer=tokenizer, engine="openai", check=False)
    try:
        with pytest.raises(WiMInputError, match="overlap=True needs a backend"):
            WiM(backend, config=CFG.with_updates(overlap=True))
        with pytest.raises(WiMInputError, match="overlap=True needs a backend"):
            WiM(backend, config=CFG).run(HARBOR, QUESTION, overlap=True)
    finally:
        backend.close()


def _whole_blocks(engine: FakeEngine, n_tokens: int) -> int:
    return n_tokens // engine.block_size * engine.block_size


@pytest.mark.parametrize("mode", ["segment_pmi", "pmi", "question_pmi"])
def test_scored_relevance_from_prompt_logprobs_equals_the_in_process_scores(
    engine: FakeEngine, tokenizer, connect, mode: str
) -> None:
    """segment_pmi (the default: each margin scored on the cache cut before its segment, one request per margin),
    pmi and question_pmi (two requests per margin: before its segment, and after it without the question) give the
    scores an in-process backend with the same capabilities gives."""
    backend = connect(engine)
    config = WiMConfig(**BUDGETS) if mode == "segment_pmi" else WiMConfig(**BUDGETS, classification=mode)
    wim = WiM(backend, config=config)  # segment_pmi: classification left at its default
    assert wim.plan(HARBOR, QUESTION).config.classification == mode
    result = wim.run(HARBOR, QUESTION, margin_batch_size=3)
    expected = _reference(tokenizer, engine.kind, WiMConfig(**BUDGETS, classification=mode), margin_batch_size=3)
    assert _texts(result) == _texts(expected)
    scores = [m.score for m in result.margins]
    assert all(s is not None for s in scores) and any(s != 0 for s in scores)
    assert scores == pytest.approx([m.score for m in expected.margins], abs=1e-9, rel=0)
    assert [m.score_terms for m in result.margins] == [m.score_terms for m in expected.margins]
    assert [m.relevant for m in result.margins] == [m.relevant for m in expected.margins]
    assert result.answer == expected.answer
    scored = [r for r in backend.requests if r.kind == "score"]
    assert len(scored) == (2 if mode == "question_pmi" else 1) * sum(bool(m.text) for m in result.margins)
    if mode != "pmi":  # each margin's baseline sees the text up to its segment's start, not all of it
        starts = sorted(r.prefix_tokens for r in scored)
        # question_pmi: a segment's end is also the next segment's start (the question-free row and the next baseline)
        assert max(starts.count(p) for p in starts) == (2 if mode == "question_pmi" else 1)
        assert starts[0] < starts[-1]
    asks = [b for b in engine.bodies(GENERATE_PATH[engine.kind]) if b.get("prompt_logprobs") == 0]
    asks += [b for b in engine.bodies(GENERATE_PATH[engine.kind]) if b.get("logprob_start_len") == 0]
    assert len(asks) == len(scored)


def test_each_row_end_is_reported_while_the_other_rows_still_decode(engine: FakeEngine, tokenizer, connect) -> None:
    """`PackedRequest.row_ended` (servers): called once per row, with the row's tokens, as soon as it ends (here row 0
    by its stop rule after 2 tokens, the others at their budget), before the steps that carry the other rows' later
    tokens. The engine holds rows 1 and 2 after their second token until row 0's end is reported (bounded), so the
    streams interleave the same way however the machine schedules their threads."""
    from wim_integrations.backends.base import PackedRequest, PackedRow

    backend = connect(engine)
    cache = backend.new_cache()
    backend.prefill(cache, tokenizer(HARBOR)["input_ids"][:300])
    prompt = tokenizer(" Note:")["input_ids"]
    rows = [PackedRow(n, prompt) for n in (100, 200, 300)]
    row0_ended = threading.Event()
    held: list[bool] = []

    def hold_others(body: dict[str, Any], n: int) -> None:
        ids = body.get("prompt", body.get("input_ids"))
        if isinstance(ids, list) and len(ids) != 100 + len(prompt) and n == 2:
            held.append(row0_ended.wait(timeout=20))

    log: list[tuple[str, int, list[int]]] = []

    def ended(i: int, ids: list[int]) -> None:
        log.append(("end", i, ids))
        if i == 0:
            row0_ended.set()

    engine.before_event = hold_others
    request = PackedRequest(rows, 6, done=lambda i, ids: i == 0 and len(ids) == 2, row_ended=ended)
    tokens: list[list[int]] = [[], [], []]
    for step in backend.generate_packed(cache, request):
        for i, tok in step:
            tokens[i].append(tok)
            log.append(("token", i, [tok]))
    assert held == [True, True]  # both other rows were held, and released by row 0's end (not by the timeout)
    ends = [e for e in log if e[0] == "end"]
    assert sorted(i for _, i, _ in ends) == [0, 1, 2]
    assert all(ids == tokens[i] for _, i, ids in ends)  # each row's whole output
    assert len(tokens[0]) == 2 and len(tokens[1]) == len(tokens[2]) == 6
    row0_end = log.index(("end", 0, tokens[0]))
    # reported while building the step that ends it, before that step is yielded: row 0's first token only before it
    assert [i for kind, i, _ in log[:row0_end] if kind == "token" and i == 0] == [0]
    later = [i for kind, i, _ in log[row0_end:] if kind == "token" and i != 0]
    assert len(later) >= 8  # rows 1 and 2 went on decoding after it (their tokens 3-6)


def test_segment_pmi_sends_each_scoring_request_as_its_margin_ends(tokenizer, connect, monkeypatch) -> None:
    """On a server the loop hands each finished margin row to the judge: `segment_pmi` sends its scoring request then,
    on a thread of its own, and takes the result when the group is judged. Every margin is prefetched, none is sent
    twice, and the scores equal a run that sends them all at judging time (prefetch turned off)."""
    from wim_integrations.reading.scoring import SegmentPMIScorer

    real = SegmentPMIScorer.prefetch
    calls: list[int] = []

    def spy(self, cache, segment_start, token_ids, asides):
        calls.append(segment_start)
        return real(self, cache, segment_start, token_ids, asides)

    config = WiMConfig(**BUDGETS)
    with FakeVLLM(tokenizer, token_delay=0.002) as engine:
        backend = connect(engine)
        monkeypatch.setattr(SegmentPMIScorer, "prefetch", spy)
        ahead = WiM(backend, config=config).run(HARBOR, QUESTION, margin_batch_size=3)
        scored = [r for r in backend.requests if r.kind == "score"]
        monkeypatch.setattr(SegmentPMIScorer, "prefetch", lambda *a: None)
        backend.requests.clear()
        inline = WiM(backend, config=config).run(HARBOR, QUESTION, margin_batch_size=3)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == ahead.n_segments
    assert len(scored) == sum(bool(m.text) for m in ahead.margins)
    assert _texts(ahead) == _texts(inline) and ahead.answer == inline.answer
    assert [m.score for m in ahead.margins] == pytest.approx([m.score for m in inline.margins], abs=1e-12, rel=0)


@pytest.mark.parametrize("plugin", ["none", "uncapped", "capped"])
def test_vllm_scoring_requests_read_the_prefix_cache_with_wims_plugin(tokenizer, connect, plugin: str) -> None:
    """vLLM never reads its prefix cache for prompt log-probabilities; with scripts/vllm_plugin a scoring request that
    asks for it does (its cached positions then carry zeros), up to the token before the first one it scores. Without
    that cap (an older plugin) a row whose needed positions came from the cache is sent again without it. The scores
    are the in-process ones either way."""
    with FakeVLLM(tokenizer, wim_plugin=plugin != "none", plugin_cap=plugin == "capped") as engine:
        backend = connect(engine)
        result = WiM(backend, config=WiMConfig(**BUDGETS)).run(HARBOR, QUESTION, margin_batch_size=3)
        asks = [b for b in engine.bodies("/v1/completions") if "prompt_logprobs" in b]
    expected = _reference(tokenizer, "vllm", WiMConfig(**BUDGETS, classification="segment_pmi"), margin_batch_size=3)
    assert [m.score for m in result.margins] == pytest.approx([m.score for m in expected.margins], abs=1e-9, rel=0)
    rows = sum(bool(m.text) for m in result.margins)
    flagged = [b for b in asks if (b.get("vllm_xargs") or {}).get("wim_read_prefix_cache") == 1]
    assert len(flagged) == rows  # each row asks first...
    for b in flagged:  # ...to read the cache up to the token before the margin's first (the prompt's last `needed`)
        assert 0 < b["vllm_xargs"]["wim_read_prefix_cache_upto"] < len(b["prompt"]) - 1
    resent = len(asks) - rows  # without the flag
    read = [r for r in backend.requests if r.kind == "score" and r.cached_tokens]
    if plugin == "capped":  # every request read its prefix but a last partial block, and none was sent again
        assert len(read) == rows and resent == 0
        assert all(r.cached_tokens >= r.prefix_tokens // engine.block_size * engine.block_size for r in read)
    elif plugin == "uncapped":  # every first try read all of its prefix but the last partial block from the cache
        assert len(read) == rows and resent < rows
        assert all(r.cached_tokens >= r.prefix_tokens // engine.block_size * engine.block_size for r in read)
    else:
        assert not read and resent == 0


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_a_server_with_another_tokenizer_is_refused_at_start(kind: str, tokenizer, connect) -> None:
    def other(text: str) -> list[int]:  # the served model's tokenizer reads special-token strings as plain text
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    with ENGINES[kind](tokenizer, tokenize=other) as engine:
        if kind == "sglang":  # SGLangProfile sends no tokenize request: documented as unchecked
            connect(engine)
            assert not engine.requests
            return
        with pytest.raises(ServerMismatchError, match="does not match the model served"):
            connect(engine)
        assert [path for path, _ in engine.requests] == ["/tokenize"]


def _sampling_of(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The sampling values of a generation request, by their name in the engine's API."""
    if kind == "sglang":
        p = body["sampling_params"]
        return {k: p.get(k) for k in ("temperature", "top_p", "top_k", "sampling_seed", "stop_token_ids")}
    return {k: body.get(k) for k in ("temperature", "top_p", "top_k", "seed", "stop_token_ids")}


def test_sampling_values_are_sent_explicitly(engine: FakeEngine, tokenizer, connect) -> None:
    backend = connect(engine)
    stops = sorted(backend.stop_ids)
    assert engine.model.stop_id in stops
    seed = "sampling_seed" if engine.kind == "sglang" else "seed"
    wim = WiM(backend, config=CFG)
    wim.run(HARBOR, QUESTION, margin_batch_size=3)
    streamed = [b for b in engine.bodies(GENERATE_PATH[engine.kind]) if b.get("stream")]
    assert len(streamed) > 3
    for body in streamed:
        assert _sampling_of(engine.kind, body) == {
            "temperature": 0,
            "top_p": 1.0,
            "top_k": -1,
            seed: None,
            "stop_token_ids": stops,
        }

    engine.reset_counts()
    result = wim.run(HARBOR, QUESTION, margin_batch_size=3, sampling=SAMPLED)
    streamed = [b for b in engine.bodies(GENERATE_PATH[engine.kind]) if b.get("stream")]
    assert len(streamed) > 3
    for body in streamed:
        assert _sampling_of(engine.kind, body) == {
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 5,
            seed: 3,
            "stop_token_ids": stops,
        }
    # The fake samples as fake_backend does (one generator seeded per request or row), so even this run is equal.
    expected = _reference(tokenizer, engine.kind, margin_batch_size=3, sampling=SAMPLED)
    assert _texts(result) == _texts(expected) and result.answer == expected.answer


@pytest.mark.parametrize("mode", ["segment_pmi", "question_pmi"])
def test_a_server_without_prompt_logprobs_refuses_scores_that_need_them(tokenizer, connect, mode: str) -> None:
    """A plain OpenAI-compatible server (as the llama.cpp server: no log-probabilities of given tokens) cannot score
    a margin without its segment or its question: asked for explicitly, the mode is refused at planning with the
    alternatives named, before any generation request; left at its default, relevance falls back to lexical."""
    with FakeVLLM(tokenizer, token_ids=False, logprobs=False) as engine:
        wim = WiM(connect(engine, "openai"), config=WiMConfig(**BUDGETS))
        assert wim.plan(HARBOR, QUESTION).config.classification == "lexical"
        with pytest.raises(WiMInputError, match=f"classification='{mode}'.*'lexical' or 'same_model'"):
            wim.stream(HARBOR, QUESTION, classification=mode)
        assert not engine.bodies("/v1/completions")


def test_the_openai_profile_reencodes_the_text_of_a_plain_server(tokenizer, connect) -> None:
    """A plain OpenAI-compatible server sends text only (no token ids, no log-probabilities): the profile encodes each
    chunk's text again with the local tokenizer. With several tokens a chunk that gives other (merged) ids than the
    model wrote, but the same text."""
    with FakeVLLM(tokenizer, token_ids=False, logprobs=False, tokens_per_chunk=4) as engine:
        backend = connect(engine, "openai")
        result = WiM(backend, config=CFG).run(HARBOR, QUESTION)
        for body in engine.bodies("/v1/completions"):
            assert "return_token_ids" not in body and "stop_token_ids" not in body
        assert not engine.unknown
    expected = _reference(tokenizer, "openai")
    assert _texts(result) == _texts(expected)
    assert result.answer == expected.answer and result.answer
    assert result.tokens.margin_generated < expected.tokens.margin_generated  # ids re-encoded: fewer, merged


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_quoted_margins_are_refused_before_any_request(kind: str, tokenizer, connect) -> None:
    """No engine profile sends a per-request decoding constraint: margin_mode='quote' is refused when the WiM is built
    with it, and at planning when a run asks for it, before anything reaches the server."""
    assert not any(p.capabilities.constrained_margins for p in PROFILES.values())
    with ENGINES[kind](tokenizer) as engine:
        backend = connect(engine)
        with pytest.raises(WiMInputError, match=r"margin_mode='quote'.*margin_mode='free'.*in process"):
            WiM(backend, config=CFG.with_updates(margin_mode="quote"))
        wim = WiM(backend, config=CFG)
        engine.reset_counts()
        backend.requests.clear()
        with pytest.raises(WiMInputError, match="margin_mode='quote'"):
            wim.run(HARBOR, QUESTION, margin_mode="quote")
        assert engine.requests == [] and not backend.requests
