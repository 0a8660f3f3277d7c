"""End to end on the embedded SmolLM2-135M-Instruct (slow: runs in CI, a few tens of seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wim_integrations.frontends.cli import main

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[2] / "examples" / "harbor_report.txt"
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"


def test_planted_fact_reaches_the_answer(default_wim):
    result = default_wim.run(
        EXAMPLE.read_text(),
        QUESTION,
        segment_tokens=384,
        margin_max_new_tokens=32,
        answer_max_new_tokens=24,
    )
    assert result.n_segments >= 3
    assert "Marlowe" in result.answer
    assert any("Marlowe" in m.text for m in result.margins)  # a margin written after the fact's segment


def test_default_model_window_and_stop_ids(default_wim):
    b = default_wim.backend
    assert b.max_context_tokens == 8192
    assert b.stop_ids == {b.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert default_wim.frame.native


def test_cli_on_the_default_model(capsys):
    code = main(
        [
            "ask",
            "-f",
            str(EXAMPLE),
            "-q",
            QUESTION,
            "--segment-tokens",
            "512",
            "--margin-tokens",
            "24",
            "--answer-tokens",
            "24",
            "--classification",
            "inline",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Marlowe" in out and "margin 1 [" in err
