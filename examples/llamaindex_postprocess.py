"""WiM in front of another reader: a node postprocessor keeps the retrieved nodes WiM found relevant.

    python examples/llamaindex_postprocess.py

The same three bundled documents and vector index as llamaindex_swap.py. `WiMNodePostprocessor` reads the retrieved
nodes with WiM margins (no answer), scores each margin (`classification="pmi"`: how much the text read raised the
margin's likelihood) and keeps the nodes a relevant margin was written on, with the margin in their metadata. The
reader after it is LlamaIndex's own `compact` synthesizer, here on the same local model through `WiMLLM`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llamaindex_swap import DOCUMENTS, QUESTION, embedding

from wim_integrations import WiM
from wim_integrations.llamaindex import WiMLLM, WiMNodePostprocessor


def main() -> dict[str, object]:
    docs = [Document(text=text, id_=name, metadata={"file": name}) for name, text in DOCUMENTS.items()]
    index = VectorStoreIndex.from_documents(
        docs, embed_model=embedding(), transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0)]
    )
    retriever = index.as_retriever(similarity_top_k=4)
    wim = WiM.default()  # the one shared embedded model: WiMLLM below uses the same weights
    postprocessor = WiMNodePostprocessor(wim, classification="pmi", margin_max_new_tokens=32)
    reader = get_response_synthesizer(llm=WiMLLM(wim, max_tokens=48), response_mode="compact")
    engine = RetrieverQueryEngine(retriever, response_synthesizer=reader, node_postprocessors=[postprocessor])

    retrieved = retriever.retrieve(QUESTION)
    response = engine.query(QUESTION)

    print(f"Question: {QUESTION}\n")
    kept = {n.node.node_id for n in response.source_nodes}
    for n in retrieved:
        mark = "kept   " if n.node.node_id in kept else "dropped"
        print(f"  {mark} {n.node.metadata['file']:14} {n.node.get_content()[:60]!r}")
    print("\nMargins on the kept nodes:")
    for n in response.source_nodes:
        meta = n.node.metadata
        if meta["wim_margin_score"] is None:  # kept by the second hop, given the nodes its margins kept
            print(f"  {meta['file']} (hop {meta['wim_hop']}, evidence lift {meta['wim_lift']:.2f})")
        else:
            print(f"  {meta['file']} (score {meta['wim_margin_score']:.2f}): {meta['wim_margin']}")
    print(f"\nAnswer (compact synthesizer on WiMLLM): {response}")
    return {"retrieved": retrieved, "response": response, "postprocessor": postprocessor}


if __name__ == "__main__":
    main()
