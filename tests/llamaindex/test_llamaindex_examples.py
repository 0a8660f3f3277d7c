"""The LlamaIndex examples, end to end on the embedded SmolLM2 (slow: a few seconds of generation each)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from llama_index.core.base.response.schema import Response

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_swap_example(capsys):
    out = _load("llamaindex_swap").main()
    before, after = out["before"], out["after"]
    assert [n.node.node_id for n in before.source_nodes] == [n.node.node_id for n in after.source_nodes]
    assert isinstance(after, Response) and after.response.strip()
    assert after.metadata["wim"]["margins"] and after.metadata["wim"]["result"]["answer"] == after.response
    assert "WiM answer:" in capsys.readouterr().out


@pytest.mark.slow
def test_events_example(capsys):
    out = _load("llamaindex_events").main()
    response, margins = out["response"], out["margins"]
    assert len(margins) == response.metadata["wim"]["result"]["n_segments"] == 2
    assert {i for m in margins for i in m.node_ids} == {"minutes-march", "minutes-april", "newsletter"}
    assert out["answers"][-1].answer == response.metadata["wim"]["result"]["answer"]
    printed = capsys.readouterr().out
    assert printed.count("  margin ") == 2 and "WiMSynthesizer.wim_segment" in printed
    assert response.metadata["wim"]["result"]["answer"] in printed  # streamed to the console token by token


@pytest.mark.slow
def test_postprocess_example(capsys):
    out = _load("llamaindex_postprocess").main()
    retrieved, response = out["retrieved"], out["response"]
    kept = response.source_nodes
    assert {n.node.node_id for n in kept} <= {n.node.node_id for n in retrieved}
    post = out["postprocessor"]
    for n in kept:  # the margin that kept it, its pmi score at or above the threshold; or the second hop's lift
        meta = n.node.metadata
        if "wim_hop" in meta:
            assert meta["wim_hop"] == 2 and meta["wim_lift"] >= post.hop_threshold and meta["wim_margin_score"] is None
        else:
            assert meta["wim_margin"] and meta["wim_margin_score"] >= post.config.threshold
    printed = capsys.readouterr().out
    assert printed.count("kept   ") == len(kept) and "Answer (compact synthesizer on WiMLLM):" in printed
