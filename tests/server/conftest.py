"""The serving-backend tests: a WiM on the real llama-server or vLLM server of tests/conftest.py (`llama_server`,
`vllm_server`, `served_model`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp_agreement import assert_same_greedy_text, assert_same_run  # noqa: F401  (used by the tests here)

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.llama_server import LlamaServer
from wim_integrations.backends.vllm_server import VLLMServer

# Small budgets keep each run a few seconds on llama.cpp (~60 tokens/s here).
SERVER_CFG = WiMConfig(segment_tokens=256, margin_max_new_tokens=24, answer_max_new_tokens=24)
HARBOR = (Path(__file__).parents[2] / "examples" / "harbor_report.txt").read_text(encoding="utf-8")
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"


@pytest.fixture
def server_wim(llama_server: LlamaServer, served_model: tuple[Path, Path]) -> Iterator[WiM]:
    wim = WiM.from_server(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", config=SERVER_CFG)
    yield wim
    wim.backend.close()  # type: ignore[attr-defined]


@pytest.fixture
def vllm_wim(vllm_server: VLLMServer, served_model: tuple[Path, Path]) -> Iterator[WiM]:
    wim = WiM.from_server(
        vllm_server.url, tokenizer=served_model[1], engine="vllm", model=vllm_server.served_name, config=SERVER_CFG
    )
    yield wim
    wim.backend.close()  # type: ignore[attr-defined]
