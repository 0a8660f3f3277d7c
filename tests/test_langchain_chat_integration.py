"""ChatWiM against langchain-tests' ChatModelIntegrationTests on the embedded SmolLM2 (slow).

A reader model has no tool calling, structured output, multimodal input or per-call model override: those
tests skip themselves through the properties below (listed with reasons in docs/langchain.md)."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

from wim_integrations import WiM
from wim_integrations.langchain import ChatWiM

CONTEXT = (
    "The Kessra lighthouse was built in 1873 by the engineer Ada Morrow. It stands 41 metres tall and its lamp "
    "can be seen 30 kilometres out at sea. Every August the town holds a lantern festival."
)


@pytest.mark.slow
class TestChatWiMIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _engine(self, default_wim: WiM) -> None:
        type(self).engine = default_wim

    @property
    def chat_model_class(self) -> type[ChatWiM]:
        return ChatWiM

    @property
    def chat_model_params(self) -> dict:
        # One short segment and small budgets keep each of the suite's calls to a second or two on CPU.
        return {
            "wim": self.engine,
            "context": CONTEXT,
            "max_tokens": 24,
            "margin_max_new_tokens": 16,
            "classification": "inline",
        }

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one WiM engine per ChatWiM: a `model=` kwarg cannot switch weights per call
