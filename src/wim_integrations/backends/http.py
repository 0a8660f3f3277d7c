"""A small JSON-over-HTTP client for serving engines: bounded retries with backoff, server-sent event streams, and
errors that say what to fix (`ServerUnavailableError`, `ServerTimeoutError`, `ServerResponseError`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from ..errors import ServerResponseError, ServerTimeoutError, ServerUnavailableError

# Statuses worth another try: the server is busy or restarting. Anything else is the request's fault.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class HTTPClient:
    """Thread-safe (one pooled `httpx.Client`). A request is retried `max_retries` times on a refused connection or a
    429/5xx answer, waiting `backoff * 2**attempt` seconds (or the server's Retry-After); a stream only until its
    first event (once tokens have been handed on, a dropped stream is an error, never a silent restart)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_connections: int = 16,
        what: str = "server",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.what = what
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def close(self) -> None:
        self._client.close()

    def get_ok(self, path: str) -> None:
        """A GET that only has to succeed (health endpoints answer with an empty body on vLLM and SGLang)."""
        self._with_retries("GET", path, None, lambda r: None)

    def get_json(self, path: str) -> Any:
        return self._with_retries("GET", path, None, lambda r: _json(r, self._where(path)))

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        return self._with_retries("POST", path, body, lambda r: _json(r, self._where(path)))

    def stream_events(self, path: str, body: dict[str, Any], cancel: threading.Event | None = None) -> Iterator[Any]:
        """The JSON objects of a server-sent event stream (`data: {...}` lines, up to `data: [DONE]`). Stops early,
        closing the connection, once `cancel` is set."""
        started = False
        for attempt in range(self.max_retries + 1):
            try:
                with self._client.stream("POST", path, json=body) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._raise_for_status(response, path, attempt)
                        continue  # retried status
                    for line in response.iter_lines():
                        if cancel is not None and cancel.is_set():
                            return
                        if not line.startswith("data:"):
                            if line.startswith("error:"):
                                detail = line[6:].strip()
                                raise ServerResponseError(f"{self._where(path)} sent an error event: {detail}")
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        event = _loads(data, self._where(path))
                        if isinstance(event, dict) and "error" in event:
                            raise ServerResponseError(f"{self._where(path)} sent an error: {event['error']}")
                        started = True
                        yield event
                    return
            except httpx.TimeoutException as e:
                raise self._timeout(path) from e
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                if started:
                    raise ServerUnavailableError(
                        f"the connection to {self._where(path)} dropped mid-stream ({type(e).__name__}); the run was "
                        "stopped, nothing partial was kept. Check the server's log (crash, restart, proxy timeout)."
                    ) from e
                if attempt >= self.max_retries:
                    raise self._unreachable(path, e) from e
                time.sleep(self.backoff * 2**attempt)

    # -- internals -----------------------------------------------------------------------------------------
    def _with_retries(self, method: str, path: str, body: dict[str, Any] | None, parse: Any) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.request(method, path, json=body)
            except httpx.TimeoutException as e:
                raise self._timeout(path) from e
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                if attempt >= self.max_retries:
                    raise self._unreachable(path, e) from e
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code >= 400:
                self._raise_for_status(response, path, attempt)
                continue
            return parse(response)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _raise_for_status(self, response: httpx.Response, path: str, attempt: int) -> None:
        """Raise for an error status, or sleep and return for a retried one."""
        status = response.status_code
        if status in _RETRY_STATUSES and attempt < self.max_retries:
            time.sleep(_retry_after(response) or self.backoff * 2**attempt)
            return
        detail = response.text[:500].strip()
        tries = f" after {attempt + 1} tries" if attempt else ""
        hint = {
            401: "pass api_key= (or set the environment variable the backend names)",
            403: "check the API key's permissions",
            404: "check base_url and engine= (this endpoint does not exist on the server)",
            429: "the server is overloaded: lower max_concurrency or raise max_retries",
        }.get(status, "see the server's log" if status >= 500 else "the request was refused: see the detail")
        raise ServerResponseError(f"{self._where(path)} answered HTTP {status}{tries}: {detail!r}; {hint}.")

    def _where(self, path: str) -> str:
        return f"{self.what} at {self.base_url}{path}"

    def _timeout(self, path: str) -> ServerTimeoutError:
        return ServerTimeoutError(
            f"{self._where(path)} did not answer in time; raise timeout= (a long context prefill can take minutes on "
            "a busy server) or check that the server is not stuck."
        )

    def _unreachable(self, path: str, error: Exception) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"could not reach {self._where(path)} ({type(error).__name__}: {error}) after {self.max_retries + 1} "
            "tries; start the server or fix base_url."
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(30.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ServerResponseError(f"{where} sent something that is not JSON: {text[:200]!r}") from e


def _json(response: httpx.Response, where: str) -> Any:
    return _loads(response.text, where)
