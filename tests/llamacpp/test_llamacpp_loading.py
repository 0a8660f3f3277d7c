"""Building WiM on llama.cpp the ways users hold a GGUF model: a file, a loaded `llama_cpp.Llama`, an Ollama store
(built here, no Ollama server), and the CLI; bad input fails before any model loads, naming the fix."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from helpers import SAMPLE

from wim_integrations import WiM, WiMConfig, WiMInputError
from wim_integrations.cli import main
from wim_integrations.errors import ModelLoadError
from wim_integrations.llamacpp_models import ollama_gguf_path

pytestmark = pytest.mark.slow

CFG = WiMConfig(segment_tokens=200, margin_max_new_tokens=8, answer_max_new_tokens=8)
Q = "Who keeps the lighthouse?"
SHORT = SAMPLE[: len(SAMPLE) // 2]  # two segments of at most 200 tokens


@pytest.fixture(scope="module")
def gguf(llamacpp_backend) -> Path:  # llamacpp_backend: skips (or fails in CI) without llama-cpp-python
    from wim_integrations.models import default_gguf_path

    return default_gguf_path()


@pytest.fixture(scope="module")
def from_file(gguf):
    return WiM.from_gguf(gguf, n_ctx=2048, n_threads=2, config=CFG)


def test_from_gguf_reads_a_document(from_file):
    result = from_file.run(SHORT, Q)
    assert result.answer and result.n_segments >= 2
    assert from_file.backend.max_context_tokens == 2048


def test_from_llama_shares_a_loaded_models_weights_and_answers_the_same(gguf, from_file):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, n_threads=2, verbose=False)
    try:
        wim = WiM.from_llama(llm, config=CFG)
        assert wim.backend.model == llm.model  # the same weights, a context of WiM's own
        assert wim.backend.max_context_tokens == llm.n_ctx() == 2048
        # the same model, window and threads, decoded in the same batches: the same floats
        ours, theirs = from_file.run(SHORT, Q), wim.run(SHORT, Q)
        assert [m.text for m in ours.margins] == [m.text for m in theirs.margins]
        assert ours.answer == theirs.answer
        # the Llama still works on its own context
        assert llm.create_completion("The capital of France is", max_tokens=2)["choices"]
    finally:
        llm.close()


def test_from_llama_finds_the_llama_inside_a_framework_wrapper(gguf):
    """LangChain's LlamaCpp keeps its Llama as `.client`, LlamaIndex's LlamaCPP as `._model` (those packages are not
    installed here: a holder of the same shape stands in for them)."""
    import llama_cpp

    from wim_integrations.llamacpp_models import llama_of

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, verbose=False)
    try:

        class LangChainShaped:
            client = llm

        assert llama_of(LangChainShaped()) is llm
        with pytest.raises(WiMInputError, match=r"holds no llama_cpp\.Llama"):
            WiM.from_llama(object())
    finally:
        llm.close()


def test_bad_gguf_inputs_fail_before_loading(tmp_path, gguf):
    with pytest.raises(ModelLoadError, match=re.escape(f"GGUF file not found: {tmp_path / 'nope.gguf'}")):
        WiM.from_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ModelLoadError, match=r"a directory; pass the \.gguf file"):
        WiM.from_gguf(tmp_path)
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        WiM.from_gguf(text)
    with pytest.raises(WiMInputError, match="n_ctx=8: pass an int >= 16"):
        WiM.from_gguf(gguf, n_ctx=8)
    with pytest.raises(WiMInputError, match="n_gpu_layers=-2"):
        WiM.from_gguf(gguf, n_gpu_layers=-2)


def _ollama_store(root: Path, gguf: Path, ref: tuple[str, ...], tag: str) -> Path:
    """An Ollama store as `ollama pull` lays it out: a manifest naming content-addressed blobs."""
    digest = "sha256-" + "ab" * 32
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    os.symlink(gguf, root / "blobs" / digest)
    (root / "blobs" / ("sha256-" + "cd" * 32)).write_text("{{ .Prompt }}")
    manifest = root / "manifests" / Path(*ref) / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": "sha256:" + "ef" * 32,
                },
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32},
                    {"mediaType": "application/vnd.ollama.image.model", "digest": digest.replace("-", ":")},
                ],
            }
        )
    )
    return manifest


def test_from_ollama_finds_the_blob_through_the_manifest(tmp_path, gguf, monkeypatch):
    store = tmp_path / "ollama-models"
    _ollama_store(store, gguf, ("registry.ollama.ai", "library", "smollm2"), "135m")
    _ollama_store(tmp_path / "other", gguf, ("registry.ollama.ai", "someone", "reader"), "latest")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    assert ollama_gguf_path("smollm2:135m").resolve() == gguf.resolve()
    assert ollama_gguf_path("someone/reader", tmp_path / "other").resolve() == gguf.resolve()
    wim = WiM.from_ollama("smollm2:135m", n_ctx=2048, n_threads=2, config=CFG)
    assert wim.model_name == "ollama:smollm2:135m" and wim.run(SHORT, Q).answer


def test_a_missing_ollama_model_names_the_path_looked_at(tmp_path, gguf, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    want = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "llama3.2" / "latest"
    with pytest.raises(ModelLoadError, match=re.escape(f"no manifest at {want}") + ".*ollama pull llama3.2"):
        WiM.from_ollama("llama3.2")
    manifest = _ollama_store(tmp_path, gguf, ("registry.ollama.ai", "library", "gone"), "1b")
    (tmp_path / "blobs" / ("sha256-" + "ab" * 32)).unlink()
    with pytest.raises(
        ModelLoadError, match=re.escape(f"manifest {manifest} names") + ".*sha256-abab.*which is missing"
    ):
        WiM.from_ollama("gone:1b")
    manifest.write_text('{"layers": []}')
    with pytest.raises(ModelLoadError, match="not an Ollama manifest with a model layer"):
        WiM.from_ollama("gone:1b")
    with pytest.raises(WiMInputError, match="Ollama model name"):
        WiM.from_ollama("../../etc")


def test_cli_reads_with_a_gguf_and_with_an_ollama_model(tmp_path, gguf, monkeypatch):
    doc = tmp_path / "doc.txt"
    doc.write_text(SHORT)
    common = ["-f", str(doc), "-q", Q, "--quiet", "--margin-tokens", "8", "--answer-tokens", "8"]
    out, err = io.StringIO(), io.StringIO()
    assert main(["ask", "--gguf", str(gguf), *common], stdout=out, stderr=err) == 0, err.getvalue()
    assert out.getvalue().strip() and "on llama.cpp" in err.getvalue()
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    err = io.StringIO()
    assert main(["ask", "--ollama", "smollm2:135m", *common], stdout=io.StringIO(), stderr=err) == 2
    assert f"no manifest at {tmp_path / 'store' / 'manifests'}" in err.getvalue()
    err = io.StringIO()
    assert main(["ask", "--gguf", str(gguf), "--model", "x", *common], stdout=io.StringIO(), stderr=err) == 2
    assert "--model and --gguf each name the model; use one" in err.getvalue()


def test_the_quality_suite_reads_on_llama_cpp_with_gguf(tmp_path, gguf):
    """`python -m benchmarks run --gguf`: the suite's tasks read by WiM on llama.cpp in process, recorded as usual."""
    from benchmarks.__main__ import main as bench

    out = tmp_path / "results.jsonl"
    args = ["run", "--preset", "quick", "--systems", "wim", "--ids", "needle-L768-d0.1-s0", "--no-progress"]
    assert bench([*args, "--gguf", str(gguf), "--threads", "2", "--out", str(out)]) == 0
    [rec] = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["model"] == gguf.name and rec["system"] == "wim"
    assert rec["detail"]["margins"] and all(m["score"] is not None for m in rec["detail"]["margins"])


def test_langchain_chain_from_gguf(gguf):
    pytest.importorskip("langchain_core")
    from wim_integrations.langchain import WiMChain

    chain = WiMChain.from_gguf(gguf, n_ctx=2048, n_threads=2, return_margins=True)
    assert chain.return_margins and chain.wim.backend.max_context_tokens == 2048
    out = chain.invoke({"context": SHORT, "question": Q})
    assert out["answer"] and out["margins"]
