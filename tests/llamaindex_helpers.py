"""Shared pieces for the LlamaIndex tests: a deterministic embedding and a small corpus."""

from __future__ import annotations

import math
import re
import zlib

from llama_index.core.embeddings import BaseEmbedding


class HashEmbedding(BaseEmbedding):
    """Bag of hashed words, L2-normalised: deterministic, offline, and similar texts score higher."""

    dim: int = 64

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for w in re.findall(r"\w+", text.lower()):
            v[zlib.crc32(w.encode()) % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


TEXTS = [
    "Mary went to the kitchen. The quick brown fox jumps over the lazy dog. " * 3
    + "The secret code is 4417. Paris is the capital of France.",
    "A long document is split into segments. After each segment the model writes a margin note. " * 3,
    "Berlin is the capital of Germany. Read the text carefully, part by part. Numbers 0 1 2 3 4 5 6 7 8 9. " * 3,
]
