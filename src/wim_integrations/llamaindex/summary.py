"""Summary queries with WiM: where LlamaIndex users reach for `tree_summarize` or a `SummaryIndex` query engine.

    engine = summary_index.as_query_engine(llm=WiMLLM(wim), response_synthesizer=WiMSummarySynthesizer(wim))
    engine.query("Summarise the report.")           # the query is the summary instruction
    summary_query_engine(documents).query("List every deadline.")

The nodes are read in document order; after each part the model writes a note (the key facts of the part, or, with
`analysis=True`, what the query asks for), and the response is written from all the nodes plus every note.
`response.metadata["wim"]["margins"]` holds the notes with their node ids, `["wim"]["result"]` the `WiMSummary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.indices.base import BaseIndex
from llama_index.core.schema import Document

from ..analysis import Analysis
from ..engine import WiM
from .query_engine import WholeDocumentsRetriever, WiMQueryEngine
from .synthesizer import WiMSynthesizer


class WiMSummarySynthesizer(WiMSynthesizer):
    """A `WiMSynthesizer` that summarises (or analyses) instead of answering a question.

    Args:
        analysis: False (default): notes record each part's key facts and the query is the summary instruction
            (an empty query gets the default summary). True: the notes are written under the query too ("list every
            obligation and its deadline").
        schema: a pydantic model each note is validated against (`analysis=True` only makes sense with it).
        note_instruction: what each note records, overriding both defaults.
        wim, and every other argument: as for `WiMSynthesizer`.
    """

    def __init__(
        self,
        wim: WiM | None = None,
        *,
        analysis: bool = False,
        schema: type | None = None,
        note_instruction: str | None = None,
        **kwargs: Any,
    ) -> None:
        Analysis.create("check", schema=schema, note_instruction=note_instruction)  # bad settings fail here
        self._analysis, self._schema, self._note_instruction = analysis, schema, note_instruction
        super().__init__(wim, **kwargs)

    def _reading_task(self, query_str: str) -> Analysis:
        extra = {"schema": self._schema, "note_instruction": self._note_instruction}
        if self._analysis:
            return Analysis.create(query_str, **extra)
        return Analysis.summary(query_str if query_str.strip() else None, **extra)


def summary_query_engine(
    source: BaseIndex | Sequence[Document | str],
    wim: WiM | None = None,
    *,
    streaming: bool = False,
    analysis: bool = False,
    schema: type | None = None,
    note_instruction: str | None = None,
    **config_overrides: Any,
) -> WiMQueryEngine:
    """A query engine whose queries are summary (or analysis) instructions over every node of `source`: an index
    (its default retriever; a `SummaryIndex` returns all its nodes) or documents, read whole and in order."""
    retriever = source.as_retriever() if isinstance(source, BaseIndex) else WholeDocumentsRetriever(source)
    synth = WiMSummarySynthesizer(
        wim,
        analysis=analysis,
        schema=schema,
        note_instruction=note_instruction,
        streaming=streaming,
        **config_overrides,
    )
    return WiMQueryEngine(retriever, response_synthesizer=synth)
