"""Margins decoded together (`margin_batch_size` > 1, the default) stream together: one span and one legacy LLM
event per segment, open at the same time, each event naming its own segment's span."""

from __future__ import annotations

import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from test_llamaindex import QUESTION, _retriever, index, root_handlers  # noqa: F401  (fixtures)

from wim_integrations.llamaindex import WiMMarginEvent, WiMMarginTokenEvent, WiMQueryEngine, WiMSegmentReadEvent

GROUP = 3


@pytest.fixture(scope="module")
def grouped(tiny_wim):
    return tiny_wim.with_options(config=tiny_wim.config.with_updates(margin_batch_size=GROUP, margin_stop="eos"))


def test_llamaindex_spans_of_a_group_are_open_together(index, grouped, root_handlers):  # noqa: F811
    rec, spans = root_handlers
    debug = LlamaDebugHandler()
    engine = WiMQueryEngine(_retriever(index, k=40), grouped, callback_manager=CallbackManager([debug]))
    r = engine.query(QUESTION)
    n = r.metadata["wim"]["result"]["n_segments"]
    assert n > 1
    wim_events = [e for e in rec.events if type(e).__name__.startswith("WiM")]
    span_of = {e.segment_index: e.span_id for e in wim_events if isinstance(e, WiMSegmentReadEvent)}
    assert len(set(span_of.values())) == n  # a span per segment
    for e in wim_events:
        if isinstance(e, WiMMarginTokenEvent | WiMMarginEvent):
            assert e.span_id == span_of[e.segment_index]
    kinds = [(type(e).__name__, getattr(e, "segment_index", None)) for e in wim_events]
    if n >= 2:  # segment 1 was read before segment 0's margin was written: both spans open together
        assert kinds.index(("WiMSegmentReadEvent", 1)) < kinds.index(("WiMMarginEvent", 0))
    closed = {s.id_ for s in spans.completed_spans}
    assert set(span_of.values()) <= closed
    pairs = debug.get_event_pairs(CBEventType.LLM)
    assert len(pairs) == n + 1 and all(len(p) == 2 for p in pairs)  # each margin and the answer start and end
