"""Faults and bad input on the serving backend: each gives a clear `WiMError` subclass before or instead of a result
that looks complete; retries are bounded; a lost prefix cache only costs time."""

from __future__ import annotations

import socket

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

# On the embedded model served by a real llama-server: run in CI (job 1), deselected by -m "not slow".
pytestmark = pytest.mark.slow


@pytest.fixture
def proxy(llama_server):
    with FaultProxy(llama_server.url) as p:
        yield p


def _wim(url: str, tokenizer, **options) -> WiM:
    backend = ServerBackend(url, tokenizer=tokenizer, engine="llama.cpp", **options)
    return WiM(backend, config=SERVER_CFG)


def test_an_unreachable_server_is_reported_at_start(served_model):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        ServerUnavailableError, match=r"could not reach .*127\.0\.0\.1.*start the server or fix base_url"
    ):
        ServerBackend(f"http://127.0.0.1:{port}", tokenizer=served_model[1], max_retries=1)


def test_a_tokenizer_of_another_model_is_refused_at_start(llama_server, tiny_backends):
    with pytest.raises(ServerMismatchError, match="does not match the model served"):
        ServerBackend(llama_server.url, tokenizer=tiny_backends["llama"].tokenizer)


def test_a_context_beyond_the_served_window_is_refused_before_any_request(llama_server, served_model):
    wim = _wim(llama_server.url, served_model[1])
    assert wim.backend.max_context_tokens == 8192  # read from the server
    with pytest.raises(ContextTooLongError, match="8192"):
        wim.stream(HARBOR * 30, QUESTION)
    assert not wim.backend.requests


def test_429_and_503_are_retried_with_backoff(proxy, served_model):
    wim = _wim(proxy.url, served_model[1], max_retries=2)
    wim.backend.client.backoff = 0.01
    reference = wim.run(HARBOR, QUESTION)
    proxy.script(("status", 429), ("status", 503))
    again = wim.run(HARBOR, QUESTION)
    assert again.answer == reference.answer
    assert len(proxy.paths) >= 3


def test_a_persistent_server_error_stops_the_run_after_bounded_retries(proxy, served_model):
    wim = _wim(proxy.url, served_model[1], max_retries=2)
    wim.backend.client.backoff = 0.01
    seen = len(proxy.paths)
    proxy.script(*[("status", 500)] * 3)
    stream = wim.stream(HARBOR, QUESTION)
    with pytest.raises(ServerResponseError, match="HTTP 500 after 3 tries"):
        for _ in stream:
            pass
    assert stream.result is None
    assert len(proxy.paths) - seen == 3


def test_a_stream_cut_off_mid_margin_fails_the_run_without_a_result(proxy, served_model):
    wim = _wim(proxy.url, served_model[1])
    proxy.script(("forward", None), ("cut", 3))  # the warm-up goes through; the first margin is cut after 3 events
    stream = wim.stream(HARBOR, QUESTION)
    with pytest.raises(ServerUnavailableError, match="without its final event"):
        for _ in stream:
            pass
    assert stream.result is None
    assert wim.run(HARBOR, QUESTION).answer  # the backend is usable afterwards


def test_a_stalled_server_times_out(proxy, served_model):
    wim = _wim(proxy.url, served_model[1], timeout=1.0)
    proxy.script(("stall", 3.0))
    with pytest.raises(ServerTimeoutError, match="raise timeout="):
        wim.run(HARBOR, QUESTION)


def test_a_lost_prefix_cache_costs_time_not_correctness(proxy, llama_server, served_model):
    wim = _wim(proxy.url, served_model[1])
    llama_server.erase_slots()
    reference = wim.run(HARBOR, QUESTION)
    llama_server.erase_slots()
    # Requests: warm-up 1, margin 1, warm-up 2, margin 2, ... Before margin 2 the server loses all it had cached.
    proxy.script(*[("forward", None)] * 3, ("call", llama_server.erase_slots))
    start = len(wim.backend.requests)
    evicted = wim.run(HARBOR, QUESTION)
    # Margin 2 on is computed in other batches than the reference's: equal up to llama.cpp's float noise.
    assert_same_run(llama_server.url, wim, wim.plan(HARBOR, QUESTION), reference, evicted)
    second_margin = [r for r in list(wim.backend.requests)[start:] if r.kind == "generate"][1]
    assert second_margin.cached_tokens == 0 and second_margin.computed_tokens == second_margin.prompt_tokens


# Hostile answers from the real server's path (the fake engines get the full set: tests/server/test_hostile_server.py).
# The next request is a warm-up, whose reply WiM reads only as JSON (its content is not needed): a reply that is not
# JSON is an error; well-formed JSON of the wrong shape in replies WiM does read is tested on the fake engines.
@pytest.mark.parametrize("body", [b"not json at all", b"{", b"\xff\xfe"])
def test_a_garbage_reply_is_a_response_error_then_the_backend_works(proxy, served_model, body):
    wim = _wim(proxy.url, served_model[1])
    proxy.script(("garbage", body))
    with pytest.raises(ServerResponseError, match="/completion"):  # names the endpoint
        wim.run(HARBOR, QUESTION)
    assert "Marlowe" in wim.run(HARBOR, QUESTION).answer


def test_a_dripping_stream_ends_at_the_requests_deadline_not_never(proxy, served_model):
    wim = _wim(proxy.url, served_model[1], timeout=2.0)
    proxy.script(("forward", None), ("drip", 0.5))  # the warm-up goes through; the first margin drips
    with pytest.raises(ServerTimeoutError):
        wim.run(HARBOR, QUESTION)
    assert wim.run(HARBOR, QUESTION).answer  # the backend is usable afterwards
