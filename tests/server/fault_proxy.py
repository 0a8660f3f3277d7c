"""A fault-injecting HTTP proxy in front of a real server: what a real one cannot easily do on demand (answer 429 or
500, stall, cut a stream off, lose its cache), each scripted for the next requests. It does not replace the real
server: everything it does not break is forwarded to it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# An action for one request: ("status", code), ("stall", seconds), ("cut", n_events), ("call", fn) then forward,
# ("drip", seconds) forwards with a pause before every line, ("garbage", body) answers 200 with that body instead.
Action = tuple[str, object]


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.actions: deque[Action] = deque()
        self.paths: list[str] = []  # every request seen, in order
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self, "GET")

            def do_POST(self) -> None:
                proxy._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def script(self, *actions: Action) -> None:
        """Apply these actions to the next requests, one each, in order (then forward as usual)."""
        with self._lock:
            self.actions.extend(actions)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if method == "POST" else None
        with self._lock:
            self.paths.append(h.path)
            kind, arg = self.actions.popleft() if self.actions else ("forward", None)
        if kind == "status":
            h.send_response(int(arg))  # type: ignore[call-overload]
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(b'{"error": {"message": "injected"}}')
            return
        if kind == "garbage":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.end_headers()
            h.wfile.write(arg)  # type: ignore[arg-type]
            return
        if kind == "stall":
            time.sleep(float(arg))  # type: ignore[arg-type]
        if kind == "call":
            fn: Callable[[], None] = arg  # type: ignore[assignment]
            fn()
        cut = int(arg) if kind == "cut" else None  # type: ignore[call-overload]
        headers = {"Content-Type": h.headers.get("Content-Type", "application/json")}
        with (
            httpx.Client(timeout=300) as client,
            client.stream(method, self.upstream + h.path, content=body, headers=headers) as r,
        ):
            h.send_response(r.status_code)
            h.send_header("Content-Type", r.headers.get("content-type", "application/json"))
            h.end_headers()
            events = 0
            try:
                for line in r.iter_lines():
                    if cut is not None and line.startswith("data:"):
                        if events == cut:
                            return  # the connection closes here: the stream is cut off without its end
                        events += 1
                    if kind == "drip":
                        time.sleep(float(arg))  # type: ignore[arg-type]
                    h.wfile.write(line.encode() + b"\n")
                    h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client went away (it stopped reading)
                return
