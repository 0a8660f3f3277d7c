"""`LlamaServer` leaves nothing behind: its log file and slot directory are removed and the log closed on stop, on a
failed start, and when an unstarted object is dropped. Fast: a stand-in binary that answers /health, not llama.cpp."""

from __future__ import annotations

import gc
import stat
import sys
from pathlib import Path

import pytest

from wim_integrations.backends.llama_server import LlamaServer
from wim_integrations.errors import ServerUnavailableError

FAKE_SERVER = """#!{python}
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if "--fail" in sys.argv:
    print("fake llama-server: refusing to start")
    sys.exit(3)
port = int(sys.argv[sys.argv.index("--port") + 1])


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{{}}")

    def log_message(self, *args):
        pass


print("fake llama-server listening", flush=True)
HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "llama-server"
    path.write_text(FAKE_SERVER.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_stop_removes_the_log_and_the_slot_directory(fake_binary: Path, tmp_path: Path) -> None:
    server = LlamaServer(tmp_path / "model.gguf", binary=fake_binary, startup_timeout=30)
    with server:
        assert server.log_path.is_file() and server.slot_dir.is_dir()
        assert "listening" in server.log_tail()
    assert not server.log_path.exists() and not server.slot_dir.exists()
    assert server._log.closed
    server.stop()  # a second stop is harmless


def test_a_failed_start_removes_them_too(fake_binary: Path, tmp_path: Path) -> None:
    server = LlamaServer(tmp_path / "model.gguf", binary=fake_binary, extra_args=("--fail",), startup_timeout=30)
    with pytest.raises(ServerUnavailableError, match=r"(?s)exited with code 3.*refusing to start"):
        server.start()
    assert not server.log_path.exists() and not server.slot_dir.exists()


def test_an_unstarted_server_dropped_leaves_nothing(fake_binary: Path, tmp_path: Path) -> None:
    server = LlamaServer(tmp_path / "model.gguf", binary=fake_binary)
    log, slots = server.log_path, server.slot_dir
    assert log.exists() and slots.exists()
    del server
    gc.collect()
    assert not log.exists() and not slots.exists()
