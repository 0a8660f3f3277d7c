"""The LangChain adapters' input boundary: a compressor given plain strings, a WiMChain input with a misspelt key,
a LangGraph node invoked outside a graph and bad settings each fail with the library's own error before any forward
pass; an empty document is never kept for a relevant margin written on its segment."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from test_langchain import DOCS, QUESTION

from wim_integrations import WiM, WiMInputError
from wim_integrations.errors import SettingsError
from wim_integrations.langchain import WiMChain, WiMDocumentCompressor


@pytest.fixture
def no_compute(tiny_wim: WiM, monkeypatch: pytest.MonkeyPatch) -> WiM:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("compute started before validation")

    for name in ("prefill", "generate", "generate_packed", "prefill_aside"):
        monkeypatch.setattr(tiny_wim.backend, name, boom)
    return tiny_wim


@pytest.mark.parametrize("documents", [["plain string"], [DOCS[0], {"page_content": "x"}], "a whole string"])
def test_the_compressor_refuses_what_is_not_a_document_before_compute(no_compute: WiM, documents) -> None:
    compressor = WiMDocumentCompressor(wim=no_compute)
    with pytest.raises(WiMInputError, match=r"documents(\[\d\] is a \w+, not a Document| must be a list)"):
        compressor.compress_documents(documents, QUESTION)
    with pytest.raises(WiMInputError, match="Document"):
        asyncio.run(compressor.acompress_documents(documents, QUESTION))


def test_an_empty_document_is_not_kept_for_a_margin_on_its_segment(tiny_wim: WiM) -> None:
    docs = [Document(page_content="", id="empty"), DOCS[0], Document(page_content="", id="empty-2")]
    kept = WiMDocumentCompressor(wim=tiny_wim, classification="none").compress_documents(docs, QUESTION)
    assert [d.id for d in kept] == ["d1"]  # every margin is kept under "none"; the empty ones share its segment


def test_a_misspelt_chain_input_key_is_refused_with_the_valid_keys(no_compute: WiM) -> None:
    chain = WiMChain(wim=no_compute)
    with pytest.raises(WiMInputError, match=r"unknown WiMChain input key \['contxt'\]\. Valid: \[.*'context'.*\]"):
        chain.invoke({"question": QUESTION, "context": DOCS, "contxt": DOCS})
    with pytest.raises(WiMInputError, match="unknown WiMChain input key"):
        chain.with_context(DOCS).invoke({"question": QUESTION, "top_k": 3})


def test_bad_chain_settings_are_settings_errors(no_compute: WiM) -> None:
    with pytest.raises(SettingsError, match="margin_batch_size: a whole number is needed, not True"):
        WiMChain(wim=no_compute, margin_batch_size=True)
    with pytest.raises(SettingsError, match="margin_max_new_tokens: Input should be greater than or equal to 1"):
        WiMDocumentCompressor(wim=no_compute, margin_max_new_tokens=0)


def test_a_langgraph_node_invoked_outside_a_graph_says_so(no_compute: WiM) -> None:
    from wim_integrations.langgraph import wim_node

    node = wim_node(WiMChain(wim=no_compute))
    with pytest.raises(WiMInputError, match="runs as a node of a LangGraph graph"):
        node.invoke({"question": QUESTION, "context": DOCS})
