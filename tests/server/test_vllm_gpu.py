"""WiM against a real `vllm serve` on a GPU (run by hand; CI runs vLLM's CPU build: tests/server/test_vllm_server.py):

    vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-prefix-caching --enable-prompt-tokens-details &
    WIM_VLLM_URL=http://127.0.0.1:8000 WIM_VLLM_TOKENIZER=/path/to/SmolLM2-135M-Instruct WIM_VLLM_MODEL=... \\
        bash scripts/test.sh tests/server/test_vllm_gpu.py -m gpu

Skipped without WIM_VLLM_URL. docs/serving.md records whether it has been run."""

from __future__ import annotations

import os

import pytest
from conftest import HARBOR, QUESTION, SERVER_CFG

from wim_integrations import WiM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not os.environ.get("WIM_VLLM_URL"), reason="set WIM_VLLM_URL to a running `vllm serve`"),
]


@pytest.fixture
def vllm_wim():
    wim = WiM.from_server(
        os.environ["WIM_VLLM_URL"],
        tokenizer=os.environ["WIM_VLLM_TOKENIZER"],
        model=os.environ.get("WIM_VLLM_MODEL"),
        engine="vllm",
        config=SERVER_CFG,
    )
    yield wim
    wim.backend.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("batch", [1, 4])
def test_wim_on_vllm_answers_and_reuses_prefixes(vllm_wim, batch):
    result = vllm_wim.run(HARBOR, QUESTION, margin_batch_size=batch)
    assert result.answer and len(result.margins) == result.n_segments
    assert vllm_wim.plan(HARBOR, QUESTION).config.classification == "segment_pmi"
    assert all(m.score is not None for m in result.margins)
    rows = [r for r in vllm_wim.backend.requests if r.kind in ("generate", "row") and r.prefix_tokens >= 256]
    assert rows and all(r.cached_tokens is not None and r.cached_tokens >= 0.9 * r.prefix_tokens for r in rows)
