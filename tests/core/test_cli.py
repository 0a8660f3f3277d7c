"""The `wim` command on a tiny model: progress, JSON output, and clear errors."""

from __future__ import annotations

import io
import json

import pytest
from helpers import SAMPLE, run_cli


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


def test_ask_shows_progress_margins_and_the_answer(tiny_model_dirs, doc):
    code, out, err = run_cli(
        "ask",
        "--file",
        str(doc),
        "-q",
        "Who keeps the lighthouse?",
        "--model",
        str(tiny_model_dirs["llama"]),
        "--segment-tokens",
        "150",
        "--margin-tokens",
        "5",
        "--answer-tokens",
        "5",
    )
    assert code == 0, err
    assert "read segment 1" in err and "margin 1 [" in err and "Answering from" in err and "Done in" in err
    assert err.count("read segment") >= 3
    assert out.strip()  # the streamed answer


def test_ask_json_prints_the_full_result(tiny_model_dirs, doc):
    code, out, err = run_cli(
        "ask",
        "-f",
        str(doc),
        "-q",
        "Where?",
        "-m",
        str(tiny_model_dirs["qwen2"]),
        "--segment-tokens",
        "150",
        "--margin-tokens",
        "4",
        "--answer-tokens",
        "4",
        "--json",
        "--classification",
        "inline",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["question"] == "Where?" and result["n_segments"] == len(result["margins"]) >= 3
    assert {m["verdict"] for m in result["margins"]} <= {"yes", "no", "unknown"}


def test_ask_reads_standard_input(tiny_model_dirs, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(SAMPLE[:300]))
    code, out, err = run_cli(
        "ask",
        "-q",
        "Where?",
        "-m",
        str(tiny_model_dirs["llama"]),
        "--quiet",
        "--margin-tokens",
        "3",
        "--answer-tokens",
        "3",
        "--segment-tokens",
        "150",
    )
    assert code == 0, err
    assert out.strip()


def test_errors_are_clear(tiny_model_dirs, tmp_path):
    code, _, err = run_cli("ask", "-f", str(tmp_path / "missing.txt"), "-q", "Where?")
    assert code == 2 and "document not found" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    code, _, err = run_cli("ask", "-f", str(empty), "-q", "Where?")
    assert code == 2 and "is empty" in err
    code, _, err = run_cli("ask", "-f", __file__, "-q", "Where?", "-m", str(tmp_path / "no-such-model"))
    assert code == 2 and "could not load model" in err and "local model directory" in err
    code, _, err = run_cli("ask", "-f", __file__, "-q", " ", "-m", str(tiny_model_dirs["llama"]))
    assert code == 2 and "question is empty" in err


def test_batched_margins_give_the_same_result(tiny_model_dirs, doc):
    common = ["ask", "-f", str(doc), "-q", "Who?", "-m", str(tiny_model_dirs["phi3"]), "--segment-tokens", "150"]
    common += ["--margin-tokens", "4", "--answer-tokens", "4", "--json"]
    code, step_by_step, err = run_cli(*common)
    assert code == 0, err
    code, batched, err = run_cli(*common, "--batch", "4")
    assert code == 0, err
    one, four = json.loads(step_by_step), json.loads(batched)
    assert [m["text"] for m in four["margins"]] == [m["text"] for m in one["margins"]] and len(one["margins"]) >= 3
    assert four["answer"] == one["answer"]
    code, _, err = run_cli(*common, "--batch", "0")
    assert code == 2 and "margin_batch_size" in err and "greater than or equal to 1" in err
