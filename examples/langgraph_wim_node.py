"""WiM as a LangGraph node: margins stream on `stream_mode="custom"` while the node reads, on the embedded SmolLM2.

    pip install 'wim-integrations[langgraph]'
    python examples/langgraph_wim_node.py

A two-node graph: `retrieve` (langchain-core's InMemoryVectorStore) puts documents in the state, `read` is
`wim_node(...)`: it writes each WiM event through LangGraph's stream writer and returns the answer and the margins.
"""

from __future__ import annotations

from typing import Any

from langchain_core.vectorstores import InMemoryVectorStore
from langchain_lcel_rag import DOCUMENTS, QUESTION, embeddings  # the same documents and embeddings
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from wim_integrations import WiMChain
from wim_integrations.langgraph import wim_node


class State(TypedDict, total=False):
    question: str
    context: list[Any]
    answer: str
    margins: list[Any]


def main() -> None:
    store = InMemoryVectorStore(embeddings())
    store.add_documents(DOCUMENTS)
    retriever = store.as_retriever(search_kwargs={"k": 3})

    graph = StateGraph(State)
    graph.add_node("retrieve", lambda state: {"context": retriever.invoke(state["question"])})
    # Small budgets keep this quick on CPU; only margins go to the custom stream here.
    reader = WiMChain.default(segment_tokens=128, margin_max_new_tokens=24, max_tokens=32)
    graph.add_node("read", wim_node(reader, events={"wim_segment_read", "wim_margin_written"}))
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "read")
    graph.add_edge("read", END)
    app = graph.compile()

    print(f"Question: {QUESTION}")
    for mode, chunk in app.stream({"question": QUESTION}, stream_mode=["custom", "updates"]):
        if mode == "custom" and chunk["event"] == "wim_segment_read":
            data = chunk["data"]
            print(f"[custom] read segment {data['segment_index'] + 1}/{data['n_segments']}")
        elif mode == "custom" and chunk["event"] == "wim_margin_written":
            m = chunk["data"]["margin"]
            sources = ", ".join(d["metadata"].get("source", "?") for d in m["documents"])
            print(f"[custom] margin [{m['verdict']}] {' '.join(m['text'].split())}  <- {sources}")
        elif mode == "updates" and "read" in chunk:
            update = chunk["read"]
            print(f"[updates] read: answer = {update['answer']!r}, {len(update['margins'])} margins")
        elif mode == "updates":
            print(f"[updates] {', '.join(chunk)} done")


if __name__ == "__main__":
    main()
