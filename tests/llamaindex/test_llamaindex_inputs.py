"""LlamaIndex adapters: bad input gets a WiMInputError naming the fix, not a tokenizer TypeError (issue #14)."""

from __future__ import annotations

import pytest

from wim_integrations import WiMInputError


def test_llamaindex_adapters_refuse_lone_surrogates_and_bad_budgets(tiny_wim):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage

    from wim_integrations import WiMLLM, WiMSynthesizer

    with pytest.raises(WiMInputError, match="lone surrogate"):
        WiMSynthesizer(tiny_wim).get_response("who?", ["abc \ud800 def"])
    llm = WiMLLM(tiny_wim, max_tokens=4)
    with pytest.raises(WiMInputError, match="prompt contains a lone surrogate"):
        llm.complete("abc \ud800 def")
    with pytest.raises(WiMInputError, match="message 0 contains a lone surrogate"):
        llm.chat([ChatMessage(role="user", content="abc \ud800")])
    with pytest.raises(WiMInputError, match="max_tokens must be at least 1"):
        llm.complete("hi", max_tokens=-3)
    with pytest.raises(WiMInputError, match="prompt is empty and formatted=True"):
        llm.complete("", formatted=True)
