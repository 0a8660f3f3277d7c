"""A hostile server: one that streams past the budget forever, drips a reply that never ends, sends garbage JSON or
wrong types, or asks for absurd Retry-After waits. Each ends in a result or in a `WiMError` subclass naming the
endpoint, within the request deadline; none hangs (every call runs under a guard that fails instead of hanging).
Fast: fake servers only, no llama-server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
from conftest import HARBOR, QUESTION
from fake_engines import FakeVLLM
from hostile_server import ScriptedServer, drip_bytes, send_events, send_json

from wim_integrations import WiM, WiMConfig, WiMInputError
from wim_integrations.backends import http
from wim_integrations.backends.server import ServerBackend
from wim_integrations.errors import ServerResponseError, ServerTimeoutError

T = TypeVar("T")
CFG = WiMConfig(
    segment_tokens=500, margin_max_new_tokens=6, answer_max_new_tokens=6, classification="none", margin_stop="eos"
)
GUARD_SECONDS = 60.0  # far above what any of these takes when it works; a hang fails here instead of blocking


def guarded(fn: Callable[[], T], seconds: float = GUARD_SECONDS) -> T:
    """`fn()` in a worker thread; fails the test if it has not returned within `seconds` (a hang)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # handed to the test
            out["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: the call hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def tokenizer(tiny_backends):
    return tiny_backends["llama"].tokenizer


class DripVLLM(FakeVLLM):
    """A vLLM that, asked for a stream, sends one token per event forever: never a finish_reason, never [DONE]."""

    def completions(self, body: dict[str, Any]) -> Any:
        if not body.get("stream"):
            return super().completions(body)
        token = self.model.vocab[1]  # a character, never the stop id

        logprobs = {"tokens": [f"token_id:{token}"], "token_logprobs": [-0.5]}
        chunk = {
            "index": 0,
            "text": self._text(token),
            "token_ids": [token],
            "logprobs": logprobs,
            "finish_reason": None,
        }

        def forever() -> Iterator[dict[str, Any]]:
            while True:
                yield {"choices": [chunk]}

        return forever()


def test_a_server_streaming_past_the_budget_does_not_hold_the_run(tokenizer) -> None:
    with DripVLLM(tokenizer, token_delay=0.01) as engine:
        wim = WiM.from_server(engine.url, tokenizer=tokenizer, engine="vllm", timeout=5, config=CFG)
        try:
            result = guarded(lambda: wim.run(HARBOR, QUESTION))
        finally:
            wim.backend.close()  # type: ignore[attr-defined]
    assert result.n_segments > 1 and result.segments_read == result.n_segments
    assert all(m.n_tokens == CFG.margin_max_new_tokens for m in result.margins)  # every margin got its budget
    assert result.tokens.answer_generated == CFG.answer_max_new_tokens


def _vllm_routes(tokenizer: Any, overrides: dict[tuple[str, str], Any] | None = None) -> dict[tuple[str, str], Any]:
    """A vLLM that answers health, models and tokenize correctly, with some routes replaced."""

    def tokenize(h: Any, body: Any) -> None:
        send_json(h, {"tokens": list(tokenizer(body["prompt"], add_special_tokens=False)["input_ids"])})

    routes: dict[tuple[str, str], Any] = {
        ("GET", "/health"): lambda h, body: send_json(h, {}),
        ("GET", "/v1/models"): lambda h, body: send_json(h, {"data": [{"id": "m", "max_model_len": 8192}]}),
        ("POST", "/tokenize"): tokenize,
    }
    routes.update(overrides or {})
    return routes


def test_a_stream_that_never_ends_and_never_reaches_the_budget_stops_at_the_deadline(tokenizer) -> None:
    heartbeat = {"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": None}]}

    def endless(h: Any, body: Any) -> None:
        send_events(h, iter(lambda: heartbeat, None), delay=0.05)

    with ScriptedServer(_vllm_routes(tokenizer, {("POST", "/v1/completions"): endless})) as server:
        wim = WiM.from_server(server.url, tokenizer=tokenizer, engine="vllm", timeout=1.0, max_retries=0, config=CFG)
        with pytest.raises(ServerTimeoutError, match=r"/v1/completions did not answer in time \(timeout=1 s"):
            guarded(lambda: wim.run(HARBOR, QUESTION))


def test_a_deadline_set_on_a_live_client_governs_its_next_requests(tokenizer) -> None:
    heartbeat = {"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": None}]}

    def endless(h: Any, body: Any) -> None:
        send_events(h, iter(lambda: heartbeat, None), delay=0.05)

    with ScriptedServer(_vllm_routes(tokenizer, {("POST", "/v1/completions"): endless})) as server:
        wim = WiM.from_server(server.url, tokenizer=tokenizer, engine="vllm", timeout=300, max_retries=0, config=CFG)
        wim.backend.client.timeout = 1.0  # lowered after construction: the endless stream must stop at 1 s, not 300
        with pytest.raises(ServerTimeoutError, match=r"did not answer in time \(timeout=1 s"):
            guarded(lambda: wim.run(HARBOR, QUESTION))
        with pytest.raises(WiMInputError, match="timeout must be a positive number"):
            wim.backend.client.timeout = 0


def test_a_reply_body_that_drips_forever_stops_at_the_deadline(tokenizer) -> None:
    routes = _vllm_routes(tokenizer, {("POST", "/tokenize"): lambda h, body: drip_bytes(h, delay=0.05)})
    with ScriptedServer(routes) as server, pytest.raises(ServerTimeoutError, match="/tokenize did not answer in time"):
        guarded(lambda: ServerBackend(server.url, tokenizer=tokenizer, engine="vllm", timeout=1.0, max_retries=0))


@pytest.mark.parametrize(
    "engine, route, reply, where",
    [
        ("vllm", ("POST", "/tokenize"), {"tokens": "abc"}, "/tokenize"),
        ("vllm", ("POST", "/tokenize"), ["not", "an", "object"], "/tokenize"),
        ("llama.cpp", ("GET", "/props"), {"total_slots": "many"}, "/props"),
        ("llama.cpp", ("GET", "/props"), [1, 2], "/props"),
    ],
)
def test_garbage_json_at_start_is_a_server_response_error_naming_the_endpoint(
    tokenizer, engine: str, route: tuple[str, str], reply: Any, where: str
) -> None:
    routes = _vllm_routes(tokenizer, {("GET", "/props"): lambda h, body: send_json(h, {"total_slots": 1})})
    routes[route] = lambda h, body: send_json(h, reply)
    with ScriptedServer(routes) as server, pytest.raises(ServerResponseError, match=f"{where} sent a reply WiM cannot"):
        guarded(lambda: ServerBackend(server.url, tokenizer=tokenizer, engine=engine, max_retries=0))


@pytest.mark.parametrize(
    "event",
    [
        {"choices": [{"index": 0, "token_ids": ["x"], "finish_reason": None}]},
        {"choices": [{"index": 0, "token_ids": 5, "finish_reason": None}]},
        {"choices": "nonsense"},
        b"[1, 2",
    ],
)
def test_garbage_in_a_stream_is_a_server_response_error_naming_the_endpoint(tokenizer, event: Any) -> None:
    def completions(h: Any, body: Any) -> None:
        if body.get("stream"):
            send_events(h, [event])
        else:
            send_json(h, {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})

    with ScriptedServer(_vllm_routes(tokenizer, {("POST", "/v1/completions"): completions})) as server:
        wim = WiM.from_server(server.url, tokenizer=tokenizer, engine="vllm", max_retries=0, config=CFG)
        with pytest.raises(ServerResponseError, match=r"/v1/completions sent (a reply WiM cannot read|something)"):
            guarded(lambda: wim.run(HARBOR, QUESTION))


@pytest.mark.parametrize(
    "header, slept",
    [("-1", 0.0), ("1e9", 30.0), ("inf", 30.0), ("0.25", 0.25), ("soon", None)],
)
def test_retry_after_is_clamped_and_garbage_falls_back_to_backoff(
    monkeypatch: pytest.MonkeyPatch, header: str, slept: float | None
) -> None:
    calls = {"n": 0}

    def busy_once(h: Any, body: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            send_json(h, {"error": "busy"}, status=503, headers={"Retry-After": header})
        else:
            send_json(h, {"ok": True})

    sleeps: list[float] = []
    monkeypatch.setattr(http.time, "sleep", sleeps.append)  # the wait is recorded, not taken
    with ScriptedServer({("GET", "/x"): busy_once}) as server:
        client = http.HTTPClient(server.url, max_retries=1, backoff=0.01)
        assert guarded(lambda: client.get_json("/x")) == {"ok": True}
        client.close()
    assert sleeps == [slept if slept else 0.01]  # Retry-After 0 or garbage: the client's own backoff


@pytest.mark.parametrize(
    "url", ["", "not a url", "ftp://example.org", "http://[::1", "http://256.1.1.1:80", "http://", "http://a b:80"]
)
def test_a_bad_base_url_is_an_input_error_before_anything_loads(url: str) -> None:
    # The tokenizer path does not exist: the URL is checked before it is looked at.
    with pytest.raises(WiMInputError, match="base_url"):
        WiM.from_server(url, tokenizer="/nonexistent/tokenizer")


def test_an_unknown_from_server_option_is_refused_with_the_valid_names() -> None:
    with pytest.raises(WiMInputError, match=r"unknown option \['served_model'\].*valid: .*'max_retries'.*'stop_ids'"):
        WiM.from_server("http://127.0.0.1:9", tokenizer="/nonexistent/tokenizer", served_model="x")


def test_bad_timeouts_and_retries_are_input_errors() -> None:
    for options in ({"timeout": 0}, {"timeout": float("inf")}, {"timeout": "5"}, {"max_retries": -1}):
        with pytest.raises(WiMInputError, match=r"timeout|max_retries"):
            http.HTTPClient("http://127.0.0.1:9", **options)


def test_a_connection_refused_is_still_retried_then_reported() -> None:
    client = http.HTTPClient("http://127.0.0.1:9", max_retries=1, backoff=0.0)
    with pytest.raises(Exception, match="could not reach") as info:
        client.get_json("/health")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("slots", [0, -1, 2.0, True, "4"])
def test_a_bad_margin_slots_is_an_input_error_before_anything_loads(slots: object) -> None:
    with pytest.raises(WiMInputError, match=r"margin_slots must be None .* or a whole number of at least 1"):
        WiM.from_server("http://127.0.0.1:9", tokenizer="/nonexistent/tokenizer", margin_slots=slots)
