"""A real llama.cpp server for the serving-backend tests: `llama-server` (built by scripts/build_llama_server.sh)
serving the embedded SmolLM2 GGUF file on 127.0.0.1, started once per session and stopped at the end. Without the
binary these tests skip, unless WIM_REQUIRE_LLAMA_SERVER=1 (CI) makes that a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.llama_server import LlamaServer, find_llama_server

# Small budgets keep each run a few seconds on llama.cpp (~60 tokens/s here).
SERVER_CFG = WiMConfig(segment_tokens=256, margin_max_new_tokens=24, answer_max_new_tokens=24)
HARBOR = (Path(__file__).parents[2] / "examples" / "harbor_report.txt").read_text(encoding="utf-8")
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"


@pytest.fixture(scope="session")
def served_model() -> tuple[Path, Path]:
    """(GGUF file the server loads, local tokenizer directory WiM encodes with)."""
    from wim_integrations.models import default_gguf_path, ensure_default_converted

    return default_gguf_path(), ensure_default_converted()


@pytest.fixture(scope="session")
def llama_server(served_model: tuple[Path, Path]) -> Iterator[LlamaServer]:
    if find_llama_server() is None:
        if os.environ.get("WIM_REQUIRE_LLAMA_SERVER") == "1":
            pytest.fail("llama-server is required here (WIM_REQUIRE_LLAMA_SERVER=1): run scripts/build_llama_server.sh")
        pytest.skip("llama-server not built (scripts/build_llama_server.sh)")
    # One slot: every request of a run goes to it, so prefix reuse is as WiM plans it; no RAM prompt cache, so a
    # prefix is either in the slot or computed again.
    with LlamaServer(served_model[0], context=8192, slots=1, extra_args=("--cache-ram", "0")) as server:
        yield server


@pytest.fixture
def server_wim(llama_server: LlamaServer, served_model: tuple[Path, Path]) -> Iterator[WiM]:
    wim = WiM.from_server(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", config=SERVER_CFG)
    yield wim
    wim.backend.close()  # type: ignore[attr-defined]
