"""`wim summarize` on a tiny model: the `ask` progress display, JSON output and clear errors."""

from __future__ import annotations

import json

import pytest
from helpers import SAMPLE, run_cli

from wim_integrations.analysis import DEFAULT_SUMMARY_INSTRUCTION


@pytest.fixture
def common(tiny_model_dirs, tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return ["summarize", "-f", str(path), "-m", str(tiny_model_dirs["llama"]), "--segment-tokens", "150"]


def test_summarize_shows_progress_notes_and_the_summary(common):
    code, out, err = run_cli(*common, "--margin-tokens", "5", "--answer-tokens", "5")
    assert code == 0, err
    assert err.count("read segment") >= 3 and "margin 1 [unclassified, kept" in err
    assert "Answering from" in err and "Done in" in err
    assert out.strip()


def test_summarize_json_with_an_instruction_and_batched_notes(common):
    args = [*common, "--margin-tokens", "4", "--answer-tokens", "4", "--json"]
    code, default, err = run_cli(*args)
    assert code == 0, err
    result = json.loads(default)
    assert result["question"] == "" and result["instruction"] == DEFAULT_SUMMARY_INSTRUCTION
    assert result["n_segments"] == len(result["margins"]) >= 3
    assert {m["verdict"] for m in result["margins"]} == {"unclassified"}
    code, batched, err = run_cli(*args, "--batch", "4")
    assert code == 0, err
    notes = [(m["text"], m["char_span"]) for m in json.loads(batched)["margins"]]
    assert notes == [(m["text"], m["char_span"]) for m in result["margins"]]
    code, out, err = run_cli(*args, "--instruction", "List every code.", "--note-instruction", "Copy the numbers.")
    assert code == 0, err
    assert json.loads(out)["instruction"] == "List every code."


def test_summarize_errors_are_clear(common):
    code, _, err = run_cli(*common, "--instruction", " ")
    assert code == 2 and "instruction is empty" in err
    code, _, err = run_cli(*common, "--batch", "0")
    assert code == 2 and "margin_batch_size" in err and "wim summarize --help" in err
