"""First contact: the CLI checks every option before a model loads, says its version, keeps library bars out of its
display; the core imports no backend's packages, and a missing extra is named with its `pip install` line."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from helpers import SAMPLE, run_cli

import wim_integrations
from wim_integrations import models
from wim_integrations.frontends.cli import main

ROOT = Path(__file__).parents[2]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the refusals below must come before one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(models, "load_default_backend", refuse)
    monkeypatch.setattr(models, "load_backend", refuse)


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


def test_version_agrees_with_the_package_metadata(capsys):
    assert wim_integrations.__version__ == version("wim-integrations")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"wim-integrations {version('wim-integrations')}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--segment-tokens", "10"], "--segment-tokens 10 is smaller than the instruction"),
        (["--segment-tokens", "0"], "segment_tokens"),
        (["--batch", "0"], "margin_batch_size"),
        (["--margin-tokens", "0"], "margin_max_new_tokens"),
        (["--relevance-threshold", "2", "--classification", "lexical"], "out of range"),
        (["--classification", "auxiliary"], "needs --classifier-model"),
        (["--server", "http://127.0.0.1:1"], "--server needs --tokenizer"),
        (["--route-header", "x-session-id"], "--route-header is for a served model"),
        (["--html", "/nonexistent-dir/report.html"], "report"),
    ],
)
def test_a_bad_option_exits_2_before_any_model_loads(no_model_loads, doc, options, message):
    code, _, err = run_cli("ask", "-f", str(doc), "-q", "Who keeps the lighthouse?", *options)
    assert code == 2, err
    assert message in err


def test_summarize_checks_its_segment_budget_before_loading(no_model_loads, doc):
    code, _, err = run_cli("summarize", "-f", str(doc), "--segment-tokens", "12")
    assert code == 2 and "--segment-tokens 12 is smaller than the instruction" in err


def test_the_word_count_bound_never_exceeds_the_planners_token_count(tiny_backends):
    """The CLI's early bound is a lower bound: a budget it accepts is never one the planner would refuse."""
    from wim_integrations import Analysis, WiM, WiMConfig
    from wim_integrations.frontends.cli import segment_budget_floor

    wim = WiM(tiny_backends["llama"])
    question = "Who keeps the lighthouse on the point?"
    configs = WiMConfig(margin_scope="segment"), WiMConfig(margin_scope="so_far"), WiMConfig(classification="inline")
    for cfg in configs:
        assert 0 < segment_budget_floor(cfg, question) <= len(wim.plan(SAMPLE, question, cfg).margin_prompt_ids)
    # A long final instruction does not go into the notes' prompt: only the note instruction counts.
    task = Analysis.create("Write a report. " * 200, note_instruction="List the names in this part.")
    assert 0 < segment_budget_floor(WiMConfig(), task) <= len(wim.plan(SAMPLE, task).margin_prompt_ids)


def test_library_progress_bars_are_silenced_in_the_display(tiny_model_dirs, doc):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        code, _, err = run_cli(
            "ask",
            "-f",
            str(doc),
            "-q",
            "Who?",
            "-m",
            str(tiny_model_dirs["llama"]),
            "--segment-tokens",
            "150",
            "--margin-tokens",
            "3",
            "--answer-tokens",
            "3",
        )
        assert code == 0, err
        assert not hf_logging.is_progress_bar_enabled()
        assert "Loading weights" not in err
    finally:
        hf_logging.enable_progress_bar()


def _blocked(script: str, *blocked: str) -> subprocess.CompletedProcess[str]:
    """Run `script` with the named top-level packages made impossible to import (as if not installed)."""
    header = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Block())
sys.path.insert(0, {str(ROOT / "src")!r})
"""
    return subprocess.run([sys.executable, "-c", header + script], capture_output=True, text=True, timeout=120)


def test_without_torch_the_hf_path_names_its_extra(tiny_model_dirs):
    script = f"""
from wim_integrations import WiM, MissingExtraError
for load in (lambda: WiM.from_pretrained({str(tiny_model_dirs["llama"])!r}), WiM.default):
    try:
        load()
    except MissingExtraError as e:
        print("refused:", e)
    else:
        raise SystemExit("loaded without torch")
print("torch" in sys.modules)
"""
    proc = _blocked(script, "torch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len([line for line in lines if line.startswith("refused:")]) == 2
    assert all("pip install 'wim-integrations[hf]'" in line for line in lines[:2])
    assert lines[-1] == "False"


def test_without_transformers_the_server_path_names_its_extra(tmp_path):
    script = f"""
from wim_integrations import WiM, MissingExtraError
try:
    WiM.from_server("http://127.0.0.1:1", tokenizer={str(tmp_path)!r})
except MissingExtraError as e:
    print(e)
"""
    proc = _blocked(script, "transformers", "tokenizers")
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'wim-integrations[server]'" in proc.stdout


def test_the_gguf_conversion_bar_is_off_while_the_cli_reports_progress():
    """transformers' GGUF conversion bar is plain tqdm (its switch does not reach it): off inside, restored after."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from wim_integrations.models import _quiet_gguf_bar

    original = gguf_utils.tqdm
    with _quiet_gguf_bar(True):
        assert gguf_utils.tqdm(range(3)).disable
    assert gguf_utils.tqdm is original
    with _quiet_gguf_bar(False):
        assert gguf_utils.tqdm is original


@pytest.mark.parametrize(
    ("name", "blocked", "extra"), [("WiMChain", "langchain_core", "langchain"), ("WiMLLM", "llama_index", "llamaindex")]
)
def test_without_a_framework_its_adapters_name_their_extra(name, blocked, extra):
    script = f"""
import wim_integrations
from wim_integrations import MissingExtraError
try:
    getattr(wim_integrations, {name!r})
except MissingExtraError as e:
    print(e)
"""
    proc = _blocked(script, blocked)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'wim-integrations[{extra}]'" in proc.stdout
