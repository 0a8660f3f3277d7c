"""Regression tests of the hardening issue (#14): each input or fault once crashed deep in a library or misled."""

from __future__ import annotations

import io
import shutil
import sys
import threading
import warnings

import pytest
from helpers import SAMPLE, run_cli

from wim_integrations import ModelLoadError, WiM, WiMConfig
from wim_integrations.frontends.cli import CONFIG_OPTIONS, _build_parser, _config
from wim_integrations.models import load_backend
from wim_integrations.reading.doc_cache import DocumentCache


def test_document_cache_nbytes_is_safe_while_another_thread_stores():
    cache = DocumentCache(max_bytes=5000)
    for i in range(5000):
        cache.put(f"seed{i}", object(), 1)
    errors: list[BaseException] = []
    stop = threading.Event()

    def store() -> None:
        i = 0
        while not stop.is_set():
            cache.put(f"k{i}", object(), 1)  # each put evicts the oldest entry
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a read overlaps a store
    writer = threading.Thread(target=store)
    writer.start()
    try:
        for _ in range(300):
            assert cache.nbytes == 5000
    except BaseException as exc:  # collected, so the writer is stopped before the test fails
        errors.append(exc)
    finally:
        stop.set()
        writer.join()
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    assert cache.nbytes == len(cache) == 5000


# -- CLI: every check that needs no model comes before loading it; clear errors for misuse ---------------------------
class _PipedStdin(io.TextIOWrapper):
    """Standard input fed from a pipe, decoded like Python does under the C locale (surrogateescape)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8", errors="surrogateescape")

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("stdin", [_PipedStdin("café who?".encode("latin-1")), io.StringIO("abc \udce9 def")])
def test_cli_refuses_undecodable_stdin_before_loading_the_model(tiny_model_dirs, monkeypatch, stdin):
    monkeypatch.setattr("sys.stdin", stdin)
    code, _, err = run_cli("ask", "-q", "who?", "-m", str(tiny_model_dirs["llama"]))
    assert code == 2, err
    assert "not UTF-8 text" in err or "lone surrogate" in err
    assert "Loading" not in err and "Traceback" not in err


def test_cli_reads_utf8_stdin_bytes(tiny_model_dirs, monkeypatch):
    monkeypatch.setattr("sys.stdin", _PipedStdin("Café. The keeper is Ines.".encode()))
    code, out, err = run_cli(
        *["ask", "-q", "who?", "--quiet", "--margin-tokens", "2", "--answer-tokens", "2"],
        "-m",
        str(tiny_model_dirs["llama"]),
    )
    assert code == 0, err
    assert out.strip()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-q", " "], "the question is empty"),
        (["-q", "who \udcff?"], "question contains a lone surrogate"),
        (["-q", "who?", "--classification", "auxiliary"], "--classification auxiliary needs --classifier-model"),
        (["-q", "who?", "--classifier-model", "x"], "--classifier-model is only used with --classification aux"),
        (["-q", "who?", "--batch", "0"], "margin_batch_size"),
    ],
)
def test_cli_checks_settings_before_loading_the_model(tmp_path, argv, message):
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to read.")
    code, _, err = run_cli("ask", "-f", str(doc), *argv)  # no -m: loading the embedded model would say "Loading"
    assert code == 2 and message in err, err
    assert "Loading" not in err


def test_cli_names_a_directory_and_a_missing_model_directory(tmp_path):
    code, _, err = run_cli("ask", "-f", str(tmp_path), "-q", "who?")
    assert code == 2 and "is a directory; pass a text file" in err
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to read.")
    code, _, err = run_cli("ask", "-f", str(doc), "-q", "who?", "-m", str(tmp_path / "no" / "such-model"))
    assert code == 2 and "no such directory" in err and "Repo id" not in err, err


def test_cli_options_are_wimconfig_fields_with_its_defaults():
    args = _build_parser().parse_args(["ask", "-q", "who?"])
    assert _config(args) == WiMConfig()
    for flag, name in CONFIG_OPTIONS.items():
        assert name in WiMConfig.model_fields, flag
    help_text = _build_parser()._subparsers._group_actions[0].choices["ask"].format_help()  # type: ignore[union-attr]
    assert f"default: {WiMConfig().margin_max_new_tokens}" in help_text


def test_a_truncated_weights_file_is_a_model_load_error(tiny_model_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dirs["llama"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_backend(broken)
    doc = tmp_path / "doc.txt"
    doc.write_text("Some text to read.")
    code, _, err = run_cli("ask", "-f", str(doc), "-q", "who?", "-m", str(broken))
    assert code == 2 and "could not load model" in err and "Traceback" not in err


# -- transformers: no deprecated calls, the user's model left as given ------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "qwen2", "phi3"])
def test_runs_emit_no_deprecation_warnings(tiny_backends, kind):
    """Deprecated calls break on the next transformers release: every path (step by step, packed, document cache hit,
    same-model classification) runs with no FutureWarning or DeprecationWarning."""
    cfg = WiMConfig(segment_tokens=150, margin_max_new_tokens=4, answer_max_new_tokens=4, classifier_max_new_tokens=3)
    wim = WiM(tiny_backends[kind], config=cfg, document_cache=DocumentCache())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wim.run(SAMPLE, "Who keeps the lighthouse?")
        wim.run(SAMPLE, "Who keeps the lighthouse?", margin_batch_size=3)  # a document cache hit, packed
        wim.run(SAMPLE, "Where?", reuse_document_cache=False, margin_batch_size=3)
    deprecated = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not deprecated, [str(w.message) for w in deprecated]
