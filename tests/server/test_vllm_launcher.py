"""`VLLMServer`'s own bounds, without vLLM: a server that dies at start or never answers is reported, in bounded
time, with its log, and leaves no process behind. (The real server: tests/server/test_vllm_server.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wim_integrations.backends.vllm_server import VLLMServer, find_vllm_python
from wim_integrations.errors import ServerUnavailableError


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for the venv's python: `body` is its shell script."""
    path = tmp_path / "python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path):
    python = _fake_python(tmp_path, 'echo "no module named vllm: $*"; exit 3')
    server = VLLMServer(tmp_path, python=python, startup_timeout=30)
    assert server.args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]  # not the `vllm` CLI (setup_vllm.sh)
    assert server.env["VLLM_TARGET_DEVICE"] == "cpu"
    with pytest.raises(ServerUnavailableError, match=r"exited with code 3 at start(.|\n)*no module named vllm"):
        server.start()
    assert not server.log_path.exists()  # removed on stop


def test_a_server_that_never_answers_is_stopped_at_the_deadline_with_its_children(tmp_path):
    # The stand-in starts a child (as vLLM starts its engine process), then never listens.
    pid_file = tmp_path / "child.pid"
    python = _fake_python(tmp_path, f"sleep 300 & echo $! > {pid_file}; echo starting; sleep 300")
    server = VLLMServer(tmp_path, python=python, startup_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=r"did not become healthy in 2 s(.|\n)*starting"):
        server.start()
    assert time.monotonic() - t0 < 40
    child = int(pid_file.read_text())
    for _ in range(50):  # the whole process group was ended: the child too
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the server's child process outlived stop()")


def test_without_a_vllm_venv_the_launcher_names_the_setup_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WIM_VLLM_PYTHON", raising=False)
    assert find_vllm_python() is None
    with pytest.raises(FileNotFoundError, match=r"scripts/setup_vllm\.sh"):
        VLLMServer(tmp_path)


def test_a_server_whose_starter_is_killed_goes_with_it(tmp_path):
    """A test run killed at its time limit (SIGKILL: no teardown) must not leave vLLM running in its own session."""
    pid_file = tmp_path / "server.pid"
    python = _fake_python(tmp_path, f"echo $$ > {pid_file}; exec sleep 300")
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from wim_integrations.backends.vllm_server import VLLMServer; "
            f"VLLMServer({str(tmp_path)!r}, python={str(python)!r}, startup_timeout=120).start()",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    server = int(pid_file.read_text())
    assert _alive(server)
    starter.kill()
    starter.wait(timeout=30)
    for _ in range(100):
        if not _alive(server):
            break
        time.sleep(0.05)
    else:
        os.kill(server, 9)
        pytest.fail("the server outlived the process that started it")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
