"""The LlamaIndex adapters' input boundary: a bad reading order is the library's own error, and an empty node is never
kept for a relevant margin written on its segment."""

from __future__ import annotations

import pytest
from llama_index.core.schema import NodeWithScore, TextNode
from test_llamaindex import QUESTION, TEXTS

from wim_integrations import WiM, WiMInputError
from wim_integrations.llamaindex import WiMNodePostprocessor


@pytest.mark.parametrize("order", ["random", None, ["document"]])
def test_an_unknown_reading_order_is_an_input_error(tiny_wim: WiM, order) -> None:
    with pytest.raises(WiMInputError, match="order must be 'document' or 'score'"):
        WiMNodePostprocessor(tiny_wim, order=order)


def test_an_empty_node_is_not_kept_for_a_margin_on_its_segment(tiny_wim: WiM) -> None:
    nodes = [
        NodeWithScore(node=TextNode(text="", id_="empty"), score=0.9),
        NodeWithScore(node=TextNode(text=TEXTS[0], id_="full"), score=0.8),
    ]
    kept = WiMNodePostprocessor(tiny_wim, order="score", classification="none").postprocess_nodes(
        nodes, query_str=QUESTION
    )
    assert [n.node.node_id for n in kept] == ["full"]  # every margin is kept under "none"
