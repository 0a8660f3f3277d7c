"""Start llama.cpp's `llama-server` on a free local port and stop it again: for tests, benchmarks and local use.

    with LlamaServer(gguf_path) as server:
        wim = WiM.from_server(server.url, tokenizer=tokenizer_dir, engine="llama.cpp")

The binary is `binary`, else $WIM_LLAMA_SERVER, else `.wim-tools/llama-server` in the working directory (built by
scripts/build_llama_server.sh), else `llama-server` on PATH."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from ..errors import ServerUnavailableError


def _remove(log: IO[bytes], log_path: Path, slot_dir: Path) -> None:
    log.close()
    log_path.unlink(missing_ok=True)
    shutil.rmtree(slot_dir, ignore_errors=True)


def find_llama_server(binary: str | os.PathLike[str] | None = None) -> Path | None:
    for candidate in (binary, os.environ.get("WIM_LLAMA_SERVER"), Path.cwd() / ".wim-tools" / "llama-server"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    found = shutil.which("llama-server")
    return Path(found) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """A `llama-server` process serving one GGUF file on 127.0.0.1 (CPU), stopped on exit."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        binary: str | os.PathLike[str] | None = None,
        context: int = 8192,
        slots: int = 1,
        threads: int | None = None,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 120.0,
        slot_files: bool = True,
    ) -> None:
        """`slot_files`: start with `--slot-save-path` (a temporary directory, removed on stop), which enables the
        slot actions: `erase_slots` and the serving backend's document files (backends/slot_states.py)."""
        found = find_llama_server(binary)
        if found is None:
            raise FileNotFoundError(
                "llama-server not found: run scripts/build_llama_server.sh (builds .wim-tools/llama-server), set "
                "WIM_LLAMA_SERVER, or put llama-server on PATH."
            )
        self.binary = found
        self.model = Path(model)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The log and the slot directory are this object's: removed on stop(), or when it is garbage collected.
        self.slot_dir = Path(tempfile.mkdtemp(prefix="llama-slots-"))
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self._cleanup = weakref.finalize(self, _remove, self._log, self.log_path, self.slot_dir)
        self.args = [
            str(self.binary),
            "-m",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-c",
            str(context * slots),
            "-np",
            str(slots),
            "--no-webui",
            *(["--slot-save-path", str(self.slot_dir) + os.sep] if slot_files else []),
            *(["-t", str(threads)] if threads else []),
            *extra_args,
        ]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        self.process = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, log = self.process.returncode, self.log_tail()
                message = f"llama-server exited with code {code} at start; its log:\n{log}"
                self.stop()
                raise ServerUnavailableError(message)
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerUnavailableError(f"llama-server did not become healthy in {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and remove its log and slot directory (read `log_tail()` before, if needed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._cleanup()

    def log_tail(self, n_chars: int = 4000) -> str:
        if self._log.closed:
            return ""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n_chars:]

    def erase_slots(self) -> None:
        """Empty every slot's cache: the next request computes its whole prompt (a cold start)."""
        slots = httpx.get(f"{self.url}/slots", timeout=10.0).json()
        for slot in slots:
            httpx.post(f"{self.url}/slots/{slot['id']}?action=erase", timeout=30.0).raise_for_status()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
