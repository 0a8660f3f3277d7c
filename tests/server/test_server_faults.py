"""Faults and bad input on the serving backend: each gives a clear `WiMError` subclass before or instead of a result
that looks complete; retries are bounded; a lost prefix cache only costs time."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HARBOR, QUESTION, SERVER_CFG, assert_same_run
from fault_proxy import FaultProxy

from wim_integrations import WiM
from wim_integrations.backends.server import ServerBackend
from wim_integrations.errors import (
    ContextTooLongError,
    ServerMismatchError,
    ServerResponseError,
    ServerTimeoutError,
    ServerUnavailableError,
)

# On the embedded model served by a real llama-server and a real vLLM server: run in CI, deselected by -m "not slow".
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    """A real server the fault tests run against: where it is, what it is, how to empty its prefix cache."""

    url: str
    engine: str
    model: str | None
    tokenizer: Path
    erase: Callable[[], None]
    endpoint: str  # the path WiM's requests go to


@pytest.fixture(params=["llama.cpp", pytest.param("vllm", marks=pytest.mark.vllm)])
def served(request: pytest.FixtureRequest, served_model) -> Served:
    if request.param == "llama.cpp":
        s = request.getfixturevalue("llama_server")
        return Served(s.url, "llama.cpp", None, served_model[1], s.erase_slots, "/completion")
    s = request.getfixturevalue("vllm_server")
    return Served(s.url, "vllm", s.served_name, served_model[1], s.reset_prefix_cache, "/v1/completions")


@pytest.fixture
def proxy(served):
    with FaultProxy(served.url) as p:
        yield p


def _wim(url: str, served: Served, **options) -> WiM:
    # No llama.cpp slot files: their save/restore requests would shift the scripted faults, and a restored file would
    # bring back a prefix a test erased on purpose (tests/server/test_llama_server_slots.py covers them).
    options.setdefault("save_slots", False)
    backend = ServerBackend(url, tokenizer=served.tokenizer, engine=served.engine, model=served.model, **options)
    # One request at a time in reading order (warm-up, margin, warm-up, margin, ...) and no scoring requests, on
    # every engine, so a scripted fault hits the same request on each.
    return WiM(backend, config=SERVER_CFG.with_updates(margin_batch_size=1, classification="lexical"))


def test_an_unreachable_server_is_reported_at_start(served_model):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        ServerUnavailableError, match=r"could not reach .*127\.0\.0\.1.*start the server or fix base_url"
    ):
        ServerBackend(f"http://127.0.0.1:{port}", tokenizer=served_model[1], max_retries=1)


def test_a_tokenizer_of_another_model_is_refused_at_start(served, tiny_backends):
    with pytest.raises(ServerMismatchError, match="does not match the model served"):
        ServerBackend(served.url, tokenizer=tiny_backends["llama"].tokenizer, engine=served.engine, model=served.model)


def test_a_context_beyond_the_served_window_is_refused_before_any_request(served):
    wim = _wim(served.url, served)
    assert wim.backend.max_context_tokens == 8192  # read from the server
    with pytest.raises(ContextTooLongError, match="8192"):
        wim.stream(HARBOR * 30, QUESTION)
    assert not wim.backend.requests


def test_429_and_503_are_retried_with_backoff(proxy, served):
    wim = _wim(proxy.url, served, max_retries=2)
    wim.backend.client.backoff = 0.01
    reference = wim.run(HARBOR, QUESTION)
    proxy.script(("status", 429), ("status", 503))
    again = wim.run(HARBOR, QUESTION)
    assert again.answer == reference.answer
    assert len(proxy.paths) >= 3


def test_a_persistent_server_error_stops_the_run_after_bounded_retries(proxy, served):
    wim = _wim(proxy.url, served, max_retries=2)
    wim.backend.client.backoff = 0.01
    seen = len(proxy.paths)
    proxy.script(*[("status", 500)] * 3)
    stream = wim.stream(HARBOR, QUESTION)
    with pytest.raises(ServerResponseError, match="HTTP 500 after 3 tries"):
        for _ in stream:
            pass
    assert stream.result is None
    assert len(proxy.paths) - seen == 3


def test_a_stream_cut_off_mid_margin_fails_the_run_without_a_result(proxy, served):
    wim = _wim(proxy.url, served)
    proxy.script(("forward", None), ("cut", 3))  # the warm-up goes through; the first margin is cut after 3 events
    stream = wim.stream(HARBOR, QUESTION)
    with pytest.raises(ServerUnavailableError, match="without its final event"):
        for _ in stream:
            pass
    assert stream.result is None
    assert wim.run(HARBOR, QUESTION).answer  # the backend is usable afterwards


def test_a_stalled_server_times_out(proxy, served):
    wim = _wim(proxy.url, served, timeout=1.0)
    proxy.script(("stall", 3.0))
    with pytest.raises(ServerTimeoutError, match="raise timeout="):
        wim.run(HARBOR, QUESTION)


def test_a_lost_prefix_cache_costs_time_not_correctness(proxy, served):
    wim = _wim(proxy.url, served)
    served.erase()
    reference = wim.run(HARBOR, QUESTION)
    served.erase()
    # Requests: warm-up 1, margin 1, warm-up 2, margin 2, ... Before margin 2 the server loses all it had cached.
    proxy.script(*[("forward", None)] * 3, ("call", served.erase))
    start = len(wim.backend.requests)
    evicted = wim.run(HARBOR, QUESTION)
    # Margin 2 on is computed in other batches than the reference's: equal up to the server's float noise.
    assert_same_run(served.url, wim, wim.plan(HARBOR, QUESTION), reference, evicted)
    second_margin = [r for r in list(wim.backend.requests)[start:] if r.kind == "generate"][1]
    assert not second_margin.cached_tokens  # vLLM leaves the count out at 0
    assert second_margin.computed_tokens in (None, second_margin.prompt_tokens)


# Hostile answers from the real server's path (the fake engines get the full set: tests/server/test_hostile_server.py).
# The next request is a warm-up, whose reply WiM reads only as JSON (its content is not needed): a reply that is not
# JSON is an error; well-formed JSON of the wrong shape in replies WiM does read is tested on the fake engines.
@pytest.mark.parametrize("body", [b"not json at all", b"{", b"\xff\xfe"])
def test_a_garbage_reply_is_a_response_error_then_the_backend_works(proxy, served, body):
    wim = _wim(proxy.url, served)
    proxy.script(("garbage", body))
    with pytest.raises(ServerResponseError, match=served.endpoint):  # names the endpoint
        wim.run(HARBOR, QUESTION)
    assert "Marlowe" in wim.run(HARBOR, QUESTION).answer


def test_a_dripping_stream_ends_at_the_requests_deadline_not_never(proxy, served):
    wim = _wim(proxy.url, served, timeout=2.0)
    proxy.script(("forward", None), ("drip", 0.5))  # the warm-up goes through; the first margin drips
    with pytest.raises(ServerTimeoutError):
        wim.run(HARBOR, QUESTION)
    # The backend is usable afterwards. The clean run gets a deadline no slow machine misses (a 2 s one failed on a
    # heavily loaded machine, a 10 s one on a quiet one): what is checked here is that the client recovers.
    wim.backend.client.timeout = 300.0
    assert wim.run(HARBOR, QUESTION).answer
