"""The LangChain examples, run as scripts on the embedded SmolLM2 (slow: one short run each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    for key in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2"):
        env.pop(key, None)  # stay offline
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_lcel_rag_example():
    out = run_example("langchain_lcel_rag.py")
    answer = next(line for line in out.splitlines() if line.startswith("Answer: "))
    assert len(answer) > len("Answer: ")
    assert "<- guide/lighthouse.md" in out  # the retriever found the lighthouse document and margins cite it
    assert "Segments read: " in out


@pytest.mark.slow
def test_stream_margins_example():
    out = run_example("langchain_stream_margins.py")
    assert "[segment 1/" in out and "-> verdict " in out
    answer = out.split("Answer (from ", 1)[1].split(": ", 1)[1]
    assert answer.strip()


@pytest.mark.slow
def test_tracing_example():
    out = run_example("langchain_tracing.py")
    assert "segments read" in out and "margin 1 [" in out  # console progress handler
    tree = out.split("the trace that would be sent:", 1)[1]
    assert "WiMChain [chain]" in tree and "wim_margin [llm]" in tree and "wim_answer [llm]" in tree


@pytest.mark.slow
def test_compressor_example():
    out = run_example("langchain_compressor.py")
    kept = out.split("Kept ", 1)[1]
    n_kept = int(kept.split(" of ", 1)[0])
    assert kept.count("\n  ") >= n_kept  # one line per kept document, with its verdicts and margin
    answer = next(line for line in out.splitlines() if line.startswith("Answer (plain reader): "))
    assert len(answer) > len("Answer (plain reader): ")


@pytest.mark.slow
def test_langgraph_example():
    out = run_example("langgraph_wim_node.py")
    assert "[updates] retrieve done" in out
    assert "[custom] read segment 1/" in out and "[custom] margin [" in out
    # the margins stream before the read node's update arrives
    assert out.index("[custom] margin [") < out.index("[updates] read: answer = ")
