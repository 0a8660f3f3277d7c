"""LangSmith tracing of a WiM run: margins, classifications and the answer are child runs of the WiMChain run.

    python examples/langchain_tracing.py                         # offline: prints the trace tree it would send
    LANGSMITH_API_KEY=... python examples/langchain_tracing.py   # sends the trace to LangSmith

The usual LangChain setup (LANGSMITH_TRACING=true plus a key) traces WiMChain with no code at all; this example
passes the tracer explicitly so it can also run offline, on a `RecordingClient` that records the runs in memory.
A `ConsoleProgressHandler` shows progress on stderr at the same time.
"""

from __future__ import annotations

from wim_integrations import WiMChain
from wim_integrations.langchain import ConsoleProgressHandler, RecordingClient, langsmith_tracer, trace_tree

CONTEXT = [
    "The Kessra lighthouse was built in 1873 by the engineer Ada Morrow. It stands 41 metres tall and its lamp can "
    "be seen 30 kilometres out at sea.",
    "Before automation in 1962, three keepers lived in the tower. The last keeper, Tomas Veld, kept a diary of every "
    "storm between 1950 and 1962. Every August the lamp is switched off for one hour during the lantern festival.",
]
QUESTION = "When was the lighthouse automated?"


def main() -> None:
    tracer = langsmith_tracer(project_name="wim-integrations-example")
    chain = WiMChain.default(segment_tokens=128, margin_max_new_tokens=24, max_tokens=32)
    answer = chain.invoke(
        {"question": QUESTION, "context": CONTEXT},
        config={"callbacks": [tracer, ConsoleProgressHandler()], "run_name": "WiMChain", "tags": ["example"]},
    )
    tracer.wait_for_futures()
    print(f"Answer: {answer}")
    if isinstance(tracer.client, RecordingClient):
        print("No LANGSMITH_API_KEY set; the trace that would be sent:")
        print(trace_tree(tracer.client))
    else:
        print("Trace sent to LangSmith project 'wim-integrations-example'.")


if __name__ == "__main__":
    main()
