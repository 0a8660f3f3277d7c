"""`WiMChain`: the WiM reader as a LangChain Runnable.

chain = {"context": retriever, "question": RunnablePassthrough()} | WiMChain.default() | StrOutputParser()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.utils import AddableDict, Input
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from ..engine import WiM, WiMStream
from ..errors import WiMInputError
from ..events import AnswerToken, Margin, WiMResult
from ..inputs import InputDocument
from .events import AsyncEventRelay, EventRelay
from .settings import WiMSettings, check_known
from .summary import TASK_KEYS, TASK_OPTIONS, analysis_from_input

QUESTION_KEYS = ("question", "input", "query")
# Every key a WiMChain input dict may have: a question (or a summary / analysis task, summary.py) and its context.
INPUT_KEYS = (*QUESTION_KEYS, "context", *TASK_KEYS, *TASK_OPTIONS)

ContextInput = str | Sequence[Document | InputDocument | str | dict[str, Any]]


class WiMChainInput(BaseModel):
    """Input of `WiMChain` (and the arguments of its `as_tool`). Aliases of 'question': 'input', 'query'."""

    question: str = Field(description="the question to answer")
    context: str | list[Document] | list[str] = Field(description="the long context: a string or documents")


class WiMQuestion(BaseModel):
    """Input of a `WiMChain` with a bound context: only the question (a plain string works too)."""

    question: str = Field(description="the question to answer from the bound context")


class WiMChainOutput(TypedDict):
    """Output of `with_margins()`: a dict, so `.pick(...)`, `.assign(...)` and `itemgetter` work on it."""

    question: str
    answer: str
    margins: list[Margin]
    result: WiMResult


class WiMChain(WiMSettings, RunnableSerializable[Input, Any]):
    """Answer a question over a long context with Writing in the Margins.

    Output: the answer string, or with `return_margins=True` / `.with_margins()` a `WiMChainOutput` dict
    (`question`, `answer`, `margins`, `result`: the full `WiMResult` with timings and token counts). Every engine
    event is dispatched as a custom event named ``wim_<event type>``; margins, classifications and the answer are
    child ``llm`` runs. Settings: one optional field per `WiMConfig` field (None keeps the engine's setting);
    they can also be given per call, ``chain.invoke(x, margin_max_new_tokens=16)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wim: WiM = Field(exclude=True, description="the engine; shared, never copied")
    context: Any = Field(None, description="a context used when the input has none (str or documents)")
    return_margins: bool = Field(False, description="output a WiMChainOutput dict instead of the answer string")

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_model_id(cls, model_id: str, **kwargs: Any) -> WiMChain:
        """Load a local or cached Hugging Face model, as `HuggingFacePipeline.from_model_id` does.

        Chain fields (settings, `context`, `return_margins`) go to the chain; everything else (`classifier_model`,
        `document_cache`, and the loading options such as `device`, `dtype`, `model_kwargs`) goes unchanged to
        `WiM.from_pretrained`, which documents and checks them.
        """
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_pretrained(model_id, **kwargs), **fields)

    @classmethod
    def from_server(cls, base_url: str, **kwargs: Any) -> WiMChain:
        """On a served model (llama.cpp server, vLLM, SGLang, OpenAI-compatible): chain fields go to the chain,
        everything else (`tokenizer`, `model`, `engine`, `api_key`, `timeout`, `max_retries`, `max_concurrency`) to
        `WiM.from_server`."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_server(base_url, **kwargs), **fields)

    @classmethod
    def from_gguf(cls, path: Any, **kwargs: Any) -> WiMChain:
        """On a GGUF file run by llama.cpp here: chain fields go to the chain, the rest (`n_ctx`, `n_threads`,
        `n_gpu_layers`) to `WiM.from_gguf`."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_gguf(path, **kwargs), **fields)

    @classmethod
    def from_llama(cls, llm: Any, **kwargs: Any) -> WiMChain:
        """On a loaded `llama_cpp.Llama` or LangChain's `LlamaCpp` (its weights shared): see `WiM.from_llama`."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_llama(llm, **kwargs), **fields)

    @classmethod
    def from_ollama(cls, name: str, **kwargs: Any) -> WiMChain:
        """On a model pulled by Ollama, read from its local store: see `WiM.from_ollama`."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_ollama(name, **kwargs), **fields)

    @classmethod
    def from_pretrained(cls, model: str, **kwargs: Any) -> WiMChain:
        """Same as `from_model_id` (kept for the name used by transformers)."""
        return cls.from_model_id(model, **kwargs)

    @classmethod
    def default(cls, **fields: Any) -> WiMChain:
        """On the embedded SmolLM2, with the process-wide default engine `WiM.default()` (shared by all adapters)."""
        check_known(fields, cls.model_fields, what="WiMChain.default() argument")
        return cls(wim=WiM.default(), **fields)

    def with_margins(self) -> WiMChain:
        """This chain returning a `WiMChainOutput` dict (answer, margins, full result) instead of the answer string."""
        return self.model_copy(update={"return_margins": True})

    def with_context(self, context: ContextInput) -> WiMChain:
        """This chain with a bound context, so it can be invoked with just the question string."""
        return self.model_copy(update={"context": context})

    # -- schemas ---------------------------------------------------------------------------------------
    @property
    def InputType(self) -> type:
        return WiMChainInput if self.context is None else WiMQuestion

    @property
    def OutputType(self) -> type:
        return WiMChainOutput if self.return_margins else str

    def get_input_schema(self, config: RunnableConfig | None = None) -> type[BaseModel]:
        return self.InputType

    # -- input handling --------------------------------------------------------------------------------
    def _parse(self, value: Any) -> tuple[Any, str]:
        """(engine context, question) from any accepted input; clear errors for the rest."""
        _refuse_messages(value)
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_none=True)
        if isinstance(value, str):
            question, context = value, None
        elif isinstance(value, dict):
            check_known(value, INPUT_KEYS, what="WiMChain input key")  # a misspelt key is not silently ignored
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
        return to_engine_context(context), question

    def _start(self, value: Any, per_call: dict[str, Any]) -> WiMStream:
        context, question = self._parse(value)
        return self.wim.stream(context, question, **self.wim_overrides(**per_call))

    def _output(self, stream: WiMStream) -> Any:
        result = stream.result
        assert result is not None
        if not self.return_margins:
            return result.answer
        return AddableDict(question=result.question, answer=result.answer, margins=result.margins, result=result)

    # -- invoke ----------------------------------------------------------------------------------------
    def invoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, run_type="chain", **kwargs)

    async def ainvoke(self, input: Input, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, run_type="chain", **kwargs)

    def _invoke(
        self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **per_call: Any
    ) -> Any:
        stream = self._start(value, per_call)
        for _ in self._relay(stream, run_manager, config):
            pass
        return self._output(stream)

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **per_call: Any
    ) -> Any:
        stream = self._start(value, per_call)
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

    def _chunk(self, ev: Any) -> Any:
        """An answer delta as a stream chunk: text, or with margins an `AddableDict` piece (chunks add up)."""
        return AddableDict(answer=ev.text) if self.return_margins else ev.text

    def _last_chunk(self, stream: WiMStream) -> Any:
        """With margins, what the answer deltas did not carry: question, margins and the result."""
        out = self._output(stream)
        return AddableDict({k: v for k, v in out.items() if k != "answer"})

    def _transform(
        self,
        chunks: Iterator[Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        **per_call: Any,
    ) -> Iterator[Any]:
        stream = self._start(_merge_chunks(list(chunks)), per_call)
        for ev in self._relay(stream, run_manager, config):
            if isinstance(ev, AnswerToken):
                yield self._chunk(ev)
        if self.return_margins:
            yield self._last_chunk(stream)

    async def _atransform(
        self,
        chunks: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        **per_call: Any,
    ) -> AsyncIterator[Any]:
        stream = self._start(_merge_chunks([c async for c in chunks]), per_call)
        async for ev in self._arelay(stream, run_manager, config):
            if isinstance(ev, AnswerToken):
                yield self._chunk(ev)
        if self.return_margins:
            yield self._last_chunk(stream)

    # -- the event loop shared by all methods ----------------------------------------------------------
    @staticmethod
    def _relay(stream: WiMStream, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Iterator[Any]:
        relay = EventRelay(config, stream)
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
        relay = AsyncEventRelay(config, stream)
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


_MESSAGES_HINT = (
    "WiMChain reads a context and answers a question: it takes {'question': ..., 'context': ...}, not chat messages. "
    "For a prompt template's messages use ChatWiM (prompt | ChatWiM(context=docs), the question being the last human "
    "message), or map the inputs before the chain: "
    "{'context': retriever, 'question': RunnablePassthrough()} | WiMChain."
)


def _refuse_messages(value: Any) -> None:
    """A prompt template's output (or a list of messages) is not WiMChain input: say what to use instead."""
    if isinstance(value, PromptValue):
        raise WiMInputError(f"WiMChain got a {type(value).__name__} from a prompt template. {_MESSAGES_HINT}")
    if isinstance(value, dict) and any(value.get(k) is not None for k in QUESTION_KEYS):
        return  # a state that also holds messages: the question and context are there
    messages = value.get("messages") if isinstance(value, dict) else value
    if isinstance(messages, list) and messages and all(isinstance(m, BaseMessage) for m in messages):
        raise WiMInputError(f"WiMChain got chat messages. {_MESSAGES_HINT}")


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


def to_engine_context(context: Any) -> Any:
    """LangChain documents become `InputDocument`s so their id and metadata reach margins and events."""
    if isinstance(context, Document):
        context = [context]
    if isinstance(context, str | bytes) or not isinstance(context, Sequence):
        return context  # the engine validates and explains
    return [
        InputDocument(text=d.page_content, id=d.id, metadata=dict(d.metadata)) if isinstance(d, Document) else d
        for d in context
    ]
