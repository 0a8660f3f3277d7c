"""A scripted HTTP server for the hostile-server tests: each route is a function that writes whatever it likes (garbage
JSON, wrong types, a stream that never ends, a body that drips forever, odd headers), so the client's handling of a
misbehaving server can be tested without a real engine. Threaded; a handler's broken pipe (the client closed the
connection) ends that handler quietly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[BaseHTTPRequestHandler, Any], None]


class ScriptedServer:
    """`routes` maps (method, path) to a handler given the request handler and the parsed JSON body (None for GET).
    Unknown routes answer 404. `hits` counts requests per path. Use as a context manager."""

    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_POST(self) -> None:
                server._serve(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else b""
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
        handler = self.routes.get((method, path))
        try:
            if handler is None:
                send_json(h, {"error": "not found"}, status=404)
            else:
                handler(h, json.loads(raw) if raw else None)
        except (BrokenPipeError, ConnectionResetError):
            return


def send_json(h: BaseHTTPRequestHandler, obj: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def send_events(h: BaseHTTPRequestHandler, events: Iterable[Any], *, delay: float = 0.0) -> None:
    """A server-sent event stream of `events` (JSON objects), `delay` seconds apart; no [DONE] unless given."""
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.end_headers()
    for event in events:
        h.wfile.write(b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n")
        h.wfile.flush()
        if delay:
            time.sleep(delay)


def drip_bytes(h: BaseHTTPRequestHandler, *, delay: float) -> None:
    """A 200 reply whose body never ends: one space every `delay` seconds."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.end_headers()
    while True:
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(delay)
