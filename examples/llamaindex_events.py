"""Watch WiM read: LlamaIndex instrumentation events, a console progress handler and a margin collector.

    python examples/llamaindex_events.py

Whole-document WiM over three short bundled documents (no index needed), answer streamed token by token.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import Document
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

from wim_integrations import WiM, WiMConfig
from wim_integrations.llamaindex import WiMMarginCollector, WiMProgressHandler, WiMQueryEngine

DOCUMENTS = [
    Document(
        id_="minutes-march",
        text="Minutes, March meeting. The committee agreed to repaint the community hall in pale green. "
        "The budget for the work is 2,400 euros. Tom will ask three painters for quotes.",
    ),
    Document(
        id_="minutes-april",
        text="Minutes, April meeting. Tom reported that the cheapest quote was 2,150 euros from Lindqvist & Sons. "
        "The committee accepted it. Work starts on the first Monday of June.",
    ),
    Document(
        id_="newsletter",
        text="Newsletter. The hall will be closed for painting during the first two weeks of June. "
        "Yoga classes move to the school gym in that period.",
    ),
]
QUESTION = "Who will paint the community hall, and for how much?"


def print_span_tree(spans: SimpleSpanHandler) -> None:
    children: dict[str | None, list[str]] = {}
    for span in spans.completed_spans + spans.dropped_spans:
        children.setdefault(span.parent_id, []).append(span.id_)

    def show(span_id: str, depth: int) -> None:
        print("  " * (depth + 1) + span_id.rsplit("-", 5)[0])
        for child in children.get(span_id, []):
            show(child, depth + 1)

    known = {s for ids in children.values() for s in ids}
    for parent, ids in children.items():
        if parent is None or parent not in known:
            for span_id in ids:
                show(span_id, 0)


def main() -> dict[str, object]:
    root = get_dispatcher()  # the root dispatcher sees the events of every module, WiM's included
    progress = WiMProgressHandler(stream=sys.stdout)
    collector = WiMMarginCollector()  # what a UI would keep: margins as they are written, linked to documents
    spans = SimpleSpanHandler()
    for handler in (progress, collector):
        root.add_event_handler(handler)
    root.add_span_handler(spans)
    try:
        wim = WiM.default(config=WiMConfig(segment_tokens=112, margin_max_new_tokens=24, answer_max_new_tokens=32))
        engine = WiMQueryEngine.from_documents(DOCUMENTS, wim, streaming=True)
        response = engine.query(QUESTION)
        print(f"Question: {QUESTION}\nAnswer: ", end="", flush=True)
        for token in response.response_gen:
            print(token, end="", flush=True)
        print("\n\nMargins by document:")
        for doc_id, texts in collector.by_node().items():
            for text in texts:
                print(f"  {doc_id}: {text}")
        print("\nSpans (query -> synthesize -> WiM steps):")
        print_span_tree(spans)
    finally:
        for handler in (progress, collector):
            root.event_handlers.remove(handler)
        root.span_handlers.remove(spans)
    return {"response": response, "margins": list(collector.margins), "answers": list(collector.answers)}


if __name__ == "__main__":
    main()
