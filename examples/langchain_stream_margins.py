"""A UI loop over `astream_events(version="v2")`: margins appear as they are written, then the answer streams.

    python examples/langchain_stream_margins.py

WiM's engine events arrive as custom events named `wim_<type>` (see docs/events.md); the answer tokens are the
WiMChain's own stream chunks (`on_chain_stream`).
"""

from __future__ import annotations

import asyncio
import sys

from wim_integrations import WiMChain
from wim_integrations.langchain import parse_event

CONTEXT = """\
Kessra is a small harbour town on a rocky coast. Its fishing fleet leaves before dawn and returns at noon. The town
market sells smoked fish, salt and rope. Every August Kessra holds a lantern festival: boats carry paper lanterns
around the bay and the lighthouse lamp is switched off for one hour.

The Kessra lighthouse was built in 1873 by the engineer Ada Morrow. It stands 41 metres tall and its lamp can be
seen 30 kilometres out at sea. Before it was automated in 1962, three keepers lived in the tower; the last of them,
Tomas Veld, kept a diary of every storm between 1950 and 1962."""
QUESTION = "How tall is the Kessra lighthouse?"


def say(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def main() -> None:
    chain = WiMChain.default(segment_tokens=128, margin_max_new_tokens=24, max_tokens=32)
    print(f"Question: {QUESTION}")
    async for ev in chain.astream_events({"question": QUESTION, "context": CONTEXT}, version="v2"):
        kind, name = ev["event"], ev.get("name")
        if kind == "on_custom_event" and name in ("wim_segment_read", "wim_margin_token", "wim_margin_written"):
            event = parse_event(name, ev["data"])  # the typed engine event (or use ev["data"], a JSON dict)
            if name == "wim_segment_read":
                say(f"[segment {event.segment_index + 1}/{event.n_segments}] margin: ")
            elif name == "wim_margin_token":
                say(event.text)
            else:
                say(f"\n    -> verdict {event.margin.verdict} ({'kept' if event.margin.relevant else 'dropped'})\n")
        elif kind == "on_custom_event" and name == "wim_answer_started":
            say(f"Answer (from {ev['data']['n_relevant_margins']} relevant margins): ")
        elif kind == "on_chain_stream" and name == "WiMChain":
            say(ev["data"]["chunk"])
        elif kind == "on_chain_end" and name == "WiMChain":
            say("\n")


if __name__ == "__main__":
    asyncio.run(main())
