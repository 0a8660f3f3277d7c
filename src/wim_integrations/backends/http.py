"""A small JSON-over-HTTP client for serving engines: bounded retries with backoff, server-sent event streams, and
errors that say what to fix (`ServerUnavailableError`, `ServerTimeoutError`, `ServerResponseError`).

Every request has an overall deadline (`timeout` seconds from sending it to its last byte), checked after each chunk
read, besides the per-read timeout: a server that drips bytes forever cannot hold a caller past it."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import httpx

from ..errors import ServerResponseError, ServerTimeoutError, ServerUnavailableError, WiMInputError
from ..inputs import check_text

# Statuses worth another try: the server is busy or restarting. Anything else is the request's fault.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Longest wait a Retry-After header can ask for: a server asking for more is treated as asking for this.
MAX_RETRY_AFTER = 30.0
# Largest reply body and stream line read: a reply beyond them is a server fault, not something to buffer.
MAX_BODY_BYTES = 256 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024 * 1024


def check_base_url(base_url: object) -> str:
    """`base_url` if it is an http(s) URL with a host (and a valid port); else a `WiMInputError` with the fix."""
    url = check_text(base_url, "base_url")
    fix = "pass the server's address, e.g. 'http://127.0.0.1:8080'"
    if not url.strip() or any(c.isspace() or not c.isprintable() for c in url):
        raise WiMInputError(f"base_url {url!r} is empty or contains spaces or control characters; {fix}.")
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as e:
        raise WiMInputError(f"base_url {url!r} is not a valid URL ({e}); {fix}.") from None
    if parsed.scheme not in ("http", "https"):
        raise WiMInputError(f"base_url {url!r} must start with http:// or https://; {fix}.")
    if not parsed.host:
        raise WiMInputError(f"base_url {url!r} names no host; {fix}.")
    if port is not None and not 0 < port < 65536:
        raise WiMInputError(f"base_url {url!r} has port {port}, outside 1-65535; {fix}.")
    return url


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
        self.base_url = check_base_url(base_url).rstrip("/")
        if not (isinstance(max_retries, int) and not isinstance(max_retries, bool) and max_retries >= 0):
            raise WiMInputError(f"max_retries must be a whole number >= 0, not {max_retries!r}.")
        self.max_retries = max_retries
        self.backoff = backoff
        self.what = what
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self.timeout = timeout

    @property
    def timeout(self) -> float:
        """Each request's deadline in seconds, from sending it to its last byte (also each read's timeout)."""
        return self._timeout_s

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        # Settable on a live client: a caller can raise the deadline of the next requests without a new connection pool.
        if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and 0 < seconds < math.inf):
            raise WiMInputError(f"timeout must be a positive number of seconds, not {seconds!r}.")
        self._timeout_s = float(seconds)
        self._client.timeout = httpx.Timeout(seconds, connect=min(seconds, 10.0))

    def close(self) -> None:
        self._client.close()

    def get_ok(self, path: str) -> None:
        """A GET that only has to succeed (health endpoints answer with an empty body on vLLM and SGLang)."""
        self._with_retries("GET", path, None, lambda body: None)

    def get_json(self, path: str) -> Any:
        return self._with_retries("GET", path, None, lambda body: _json(body, self._where(path)))

    def post_json(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        """`headers`: extra headers of this request only (a router's routing key)."""
        return self._with_retries("POST", path, body, lambda reply: _json(reply, self._where(path)), headers)

    def stream_events(
        self,
        path: str,
        body: dict[str, Any],
        cancel: threading.Event | None = None,
        headers: dict[str, str] | None = None,
    ) -> Generator[Any, None, None]:
        """The JSON objects of a server-sent event stream (`data: {...}` lines, up to `data: [DONE]`). Stops early,
        closing the connection, once `cancel` is set or the consumer closes the iterator."""
        started = False
        for attempt in range(self.max_retries + 1):
            deadline = time.monotonic() + self.timeout
            try:
                with self._client.stream("POST", path, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        reply = _read_body(response, deadline, self._timeout(path))
                        self._raise_for_status(response, reply, path, attempt)
                        continue  # retried status
                    for line in _lines(response, deadline, self._timeout(path), self._where(path)):
                        if cancel is not None and cancel.is_set():
                            return
                        if not line.startswith("data:"):
                            if line.startswith("error:"):
                                detail = line[6:].strip()
                                raise ServerResponseError(f"{self._where(path)} sent an error event: {detail[:500]}")
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        event = _loads(data, self._where(path))
                        if isinstance(event, dict) and "error" in event:
                            raise ServerResponseError(f"{self._where(path)} sent an error: {str(event['error'])[:500]}")
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
    def _with_retries(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        parse: Callable[[bytes], Any],
        headers: dict[str, str] | None = None,
    ) -> Any:
        for attempt in range(self.max_retries + 1):
            deadline = time.monotonic() + self.timeout
            try:
                with self._client.stream(method, path, json=body, headers=headers) as response:
                    reply = _read_body(response, deadline, self._timeout(path))
            except httpx.TimeoutException as e:
                raise self._timeout(path) from e
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                if attempt >= self.max_retries:
                    raise self._unreachable(path, e) from e
                time.sleep(self.backoff * 2**attempt)
                continue
            if response.status_code >= 400:
                self._raise_for_status(response, reply, path, attempt)
                continue
            return parse(reply)
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _raise_for_status(self, response: httpx.Response, reply: bytes, path: str, attempt: int) -> None:
        """Raise for an error status, or sleep and return for a retried one."""
        status = response.status_code
        if status in _RETRY_STATUSES and attempt < self.max_retries:
            time.sleep(_retry_after(response) or self.backoff * 2**attempt)
            return
        detail = reply[:500].decode("utf-8", errors="replace").strip()
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
            f"{self._where(path)} did not answer in time (timeout={self.timeout:g} s, for each request from sending "
            "it to its last byte); raise timeout= (a long context prefill can take minutes on a busy server) or check "
            "that the server is not stuck."
        )

    def _unreachable(self, path: str, error: Exception) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"could not reach {self._where(path)} ({type(error).__name__}: {error}) after {self.max_retries + 1} "
            "tries; start the server or fix base_url."
        )


def _retry_after(response: httpx.Response) -> float | None:
    """The server's Retry-After in seconds, clamped to [0, MAX_RETRY_AFTER]; None when absent or not a number (an
    HTTP date, garbage): the client's own backoff applies then."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _read_body(response: httpx.Response, deadline: float, late: ServerTimeoutError) -> bytes:
    """The whole body, read within the deadline and the size bound."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if time.monotonic() > deadline:
            raise late
        if len(body) > MAX_BODY_BYTES:
            raise ServerResponseError(f"a reply from {response.url} is over {MAX_BODY_BYTES >> 20} MiB; refused.")
    return bytes(body)


def _lines(response: httpx.Response, deadline: float, late: ServerTimeoutError, where: str) -> Iterator[str]:
    """The lines of a streamed body as they arrive, within the deadline; a line over MAX_LINE_BYTES is an error."""
    pending = bytearray()
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise late
        pending += chunk
        if b"\n" in chunk:
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                yield _text(line)
        if len(pending) > MAX_LINE_BYTES:
            raise ServerResponseError(f"{where} sent a stream line over {MAX_LINE_BYTES >> 20} MiB; refused.")
    if pending:
        yield _text(bytes(pending))


def _text(line: bytes) -> str:
    return line.rstrip(b"\r").decode("utf-8", errors="replace")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ServerResponseError(f"{where} sent something that is not JSON: {text[:200]!r}") from e


def _json(body: bytes, where: str) -> Any:
    return _loads(body.decode("utf-8", errors="replace"), where)
