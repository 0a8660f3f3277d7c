"""`WiMChain`: the WiM reader as a LangChain Runnable.

chain = {"context": retriever, "question": RunnablePassthrough()} | WiMChain.default() | StrOutputParser()
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.utils import Input
from pydantic import BaseModel, ConfigDict, Field

from ..config import ClassificationMode, SamplingConfig
from ..engine import WiM, WiMStream
from ..errors import WiMInputError
from ..events import AnswerToken, WiMResult
from ..segmenter import InputDocument
from .events import AsyncEventRelay, EventRelay
from .summary import analysis_from_input

QUESTION_KEYS = ("question", "input", "query")
# Chain fields that override the engine's WiMConfig for each call (None keeps the engine's setting).
WIM_SETTINGS = (
    "segment_tokens",
    "margin_max_new_tokens",
    "answer_max_new_tokens",
    "classification",
    "classifier_max_new_tokens",
    "keep_unknown_verdicts",
    "sampling",
    "margin_batch_size",
    "reuse_document_cache",
)

ContextInput = str | Sequence[Document | InputDocument | str | dict[str, Any]]


class WiMChainInput(BaseModel):
    """Input of `WiMChain`. A plain string is also accepted as the question when the chain has a bound context."""

    question: str | None = Field(None, description="the question to answer (aliases: 'input', 'query')")
    input: str | None = Field(None, description="alias of 'question'")
    query: str | None = Field(None, description="alias of 'question'")
    context: str | list[Document] | list[str] | None = Field(
        None, description="the long context: a string or documents (defaults to the chain's bound context)"
    )
    # Reading without a question (langchain/summary.py); a dict input may also carry "schema", a pydantic model.
    summarize: bool | str | None = Field(None, description="True or a summary instruction: summarise the context")
    analyze: str | None = Field(None, description="an analysis instruction, e.g. 'list every obligation'")
    note_instruction: str | None = Field(None, description="what each note records (summaries and analyses)")


@functools.cache
def _default_engine() -> WiM:
    return WiM.default()


class WiMChain(RunnableSerializable[Input, Any]):
    """Answer a question over a long context with Writing in the Margins.

    Output: the answer string, or the full `WiMResult` (answer, margins with verdicts and source document
    metadata, timings) when `return_margins=True` / `.with_margins()`. Every engine event is dispatched as a
    custom event named ``wim_<event type>``; margins, classifications and the answer are child ``llm`` runs.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wim: WiM = Field(exclude=True, description="the engine; shared, never copied")
    context: Any = Field(None, description="a context used when the input has none (str or documents)")
    return_margins: bool = False
    segment_tokens: int | None = None
    margin_max_new_tokens: int | None = None
    answer_max_new_tokens: int | None = None
    classification: ClassificationMode | None = None
    classifier_max_new_tokens: int | None = None
    keep_unknown_verdicts: bool | None = None
    sampling: SamplingConfig | None = None
    margin_batch_size: int | None = Field(None, ge=1, description="margins decoded together (see WiMConfig)")
    reuse_document_cache: bool | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str, *, classifier_model: str | None = None, **kwargs: Any) -> WiMChain:
        """Load a local or cached Hugging Face model; chain fields (e.g. `margin_max_new_tokens`) go to the chain."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields}
        return cls(wim=WiM.from_pretrained(model, classifier_model=classifier_model, **kwargs), **fields)

    @classmethod
    def default(cls, **fields: Any) -> WiMChain:
        """On the embedded SmolLM2; the engine is loaded once per process and shared by every default chain."""
        return cls(wim=_default_engine(), **fields)

    def with_margins(self) -> WiMChain:
        """This chain returning the full `WiMResult` instead of the answer string."""
        return self.model_copy(update={"return_margins": True})

    def with_context(self, context: ContextInput) -> WiMChain:
        """This chain with a bound context, so it can be invoked with just the question string."""
        return self.model_copy(update={"context": context})

    # -- schemas ---------------------------------------------------------------------------------------
    @property
    def InputType(self) -> type:
        return WiMChainInput

    @property
    def OutputType(self) -> type:
        return WiMResult if self.return_margins else str

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return WiMChainInput

    # -- input handling --------------------------------------------------------------------------------
    def _overrides(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in WIM_SETTINGS if getattr(self, k) is not None}

    def _parse(self, value: Any) -> tuple[Any, str]:
        """(engine context, question) from any accepted input; clear errors for the rest."""
        if isinstance(value, WiMChainInput):
            value = value.model_dump(exclude_none=True)
        if isinstance(value, str):
            question, context = value, None
        elif isinstance(value, dict):
            found = [k for k in QUESTION_KEYS if value.get(k) is not None]
            if not found and (task := analysis_from_input(value)) is not None:  # a summary / analysis (summary.py)
                value = {**value, "question": task}
                found = ["question"]
            if not found:
                raise WiMInputError(
                    f"WiMChain input has no question: expected one of {list(QUESTION_KEYS)} among keys "
                    f"{sorted(value)}. Pass {{'question': ..., 'context': ...}} (or {{'summarize': True, "
                    "'context': ...}} for a summary)."
                )
            question, context = value[found[0]], value.get("context")
        else:
            raise WiMInputError(
                f"WiMChain input must be a dict with 'question' and 'context' or a question string, "
                f"not {type(value).__name__}."
            )
        if context is None:
            context = self.context
        if context is None:
            raise WiMInputError(
                "WiMChain got a question but no context: pass {'question': ..., 'context': ...} or bind one with "
                "WiMChain(wim=..., context=...) / chain.with_context(...)."
            )
        return _to_engine_context(context), question

    def _start(self, value: Any) -> WiMStream:
        context, question = self._parse(value)
        return self.wim.stream(context, question, **self._overrides())

    def _output(self, stream: WiMStream) -> Any:
        assert stream.result is not None
        return stream.result if self.return_margins else stream.result.answer

    # -- invoke ----------------------------------------------------------------------------------------
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, run_type="chain", **kwargs)

    async def ainvoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, run_type="chain", **kwargs)

    def _invoke(self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        stream = self._start(value)
        for _ in self._relay(stream, run_manager, config):
            pass
        return self._output(stream)

    async def _ainvoke(self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig) -> Any:
        stream = self._start(value)
        async for _ in self._arelay(stream, run_manager, config):
            pass
        return self._output(stream)

    # -- streaming -------------------------------------------------------------------------------------
    def stream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    def transform(self, input: Iterator[Input], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, run_type="chain", **kwargs)

    async def atransform(
        self, input: AsyncIterator[Input], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(
            input, self._atransform, config, run_type="chain", **kwargs
        ):
            yield chunk

    def _transform(
        self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[Any]:
        stream = self._start(_merge_chunks(list(chunks)))
        for ev in self._relay(stream, run_manager, config):
            if isinstance(ev, AnswerToken) and not self.return_margins:
                yield ev.text
        if self.return_margins:
            yield self._output(stream)

    async def _atransform(
        self, chunks: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        stream = self._start(_merge_chunks([c async for c in chunks]))
        async for ev in self._arelay(stream, run_manager, config):
            if isinstance(ev, AnswerToken) and not self.return_margins:
                yield ev.text
        if self.return_margins:
            yield self._output(stream)

    # -- the event loop shared by all methods ----------------------------------------------------------
    @staticmethod
    def _relay(stream: WiMStream, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Iterator[Any]:
        relay = EventRelay(run_manager, config, stream.plan)
        error: BaseException | None = None
        try:
            for ev in stream:
                relay(ev)
                yield ev
        except GeneratorExit:
            raise  # the consumer stopped early: not an error of the run
        except BaseException as exc:
            error = exc
            raise
        finally:
            stream.close()
            relay.close(error)

    @staticmethod
    async def _arelay(
        stream: WiMStream, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> AsyncIterator[Any]:
        relay = AsyncEventRelay(run_manager, config, stream.plan)
        error: BaseException | None = None
        events = stream.aiter()
        try:
            async for ev in events:
                await relay(ev)
                yield ev
        except BaseException as exc:
            error = exc
            raise
        finally:
            await events.aclose()  # stops the worker-thread run if the consumer left early
            await relay.close(error)


def _merge_chunks(chunks: list[Any]) -> Any:
    """`transform` input: one value, or dict pieces (merged) / string pieces (joined) from an upstream stream."""
    if not chunks:
        raise WiMInputError("WiMChain.transform got an empty input stream; it needs a question and a context.")
    if len(chunks) == 1:
        return chunks[0]
    if all(isinstance(c, dict) for c in chunks):
        merged: dict[str, Any] = {}
        for c in chunks:
            merged.update(c)
        return merged
    if all(isinstance(c, str) for c in chunks):
        return "".join(chunks)
    raise WiMInputError(f"WiMChain.transform cannot merge input chunks of types {[type(c).__name__ for c in chunks]}.")


def _to_engine_context(context: Any) -> Any:
    """LangChain documents become `InputDocument`s so their id and metadata reach margins and events."""
    if isinstance(context, Document):
        context = [context]
    if isinstance(context, str | bytes) or not isinstance(context, Sequence):
        return context  # the engine validates and explains
    return [
        InputDocument(text=d.page_content, id=d.id, metadata=dict(d.metadata)) if isinstance(d, Document) else d
        for d in context
    ]
