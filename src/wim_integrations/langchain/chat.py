"""`ChatWiM`: WiM as a LangChain chat model, for places that expect a `BaseChatModel`.

Convention: the long context is the model's bound documents (`ChatWiM(context=docs)` / `.with_context(docs)` /
`invoke(messages, context=docs)`), followed by the text of the system messages; the question is the last human
message; earlier human/AI turns are read as one more context document ("Conversation so far"). Margins are custom
events (``wim_*``, as for `WiMChain`) while the answer streams; the final message carries token usage and the whole
run (margins, verdicts, timings) in ``response_metadata["wim"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import InputTokenDetails, UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import get_async_callback_manager_for_config, get_callback_manager_for_config
from pydantic import ConfigDict, Field, SecretStr

from ..config import SamplingConfig
from ..engine import WiM, WiMStream
from ..errors import WiMInputError
from ..events import AnswerToken, WiMResult
from ..inputs import InputDocument, check_text
from ..textstream import StopCut
from .chain import ContextInput, to_engine_context
from .events import AsyncEventRelay, EventRelay, event_name, event_payload, with_handler
from .settings import WIM_SETTINGS, WiMSettings, check_known

_CALL_KWARGS = (*WIM_SETTINGS, "context")
T = TypeVar("T", CallbackManager, AsyncCallbackManager)


def _default_wim() -> WiM:
    return WiM.default()


class ChatWiM(WiMSettings, BaseChatModel):
    """Writing in the Margins as a chat model (see the module docstring for how messages map to WiM's inputs).

    Settings: one optional field per `WiMConfig` field (None keeps the engine's setting), per call as invoke
    kwargs too. Standard chat-model parameters: `max_tokens` (the answer budget), `temperature` (0: greedy, > 0:
    sampling at that temperature), `stop` (decoding ends at the first stop sequence, left out of the answer). `timeout`,
    `max_retries` and `api_key` are accepted so standard code runs unchanged, and do nothing: the model is local.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    wim: WiM = Field(default_factory=_default_wim, exclude=True, description="the engine (default: WiM.default())")
    context: Any = Field(None, description="documents or text read before the system messages' text")
    temperature: float | None = Field(None, ge=0, description="0: greedy; > 0: sample at this temperature")
    stop: list[str] | None = Field(
        None, description="the answer ends before the first of these strings (decoding stops there)"
    )
    streaming: bool = Field(False, description="invoke() streams internally (callbacks get tokens)")
    timeout: float | None = Field(None, description="accepted for compatibility; unused (local model)")
    max_retries: int | None = Field(None, description="accepted for compatibility; unused (local model)")
    api_key: SecretStr | None = Field(None, description="accepted for compatibility; unused (local model)")

    @classmethod
    def from_model_id(cls, model_id: str, **kwargs: Any) -> ChatWiM:
        """Load a local or cached Hugging Face model; chat-model fields go to ChatWiM, the rest to
        `WiM.from_pretrained` (loading options, `classifier_model`, `document_cache`)."""
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.model_fields and k != "wim"}
        return cls(wim=WiM.from_pretrained(model_id, **kwargs), **fields)

    def with_context(self, context: ContextInput) -> ChatWiM:
        """This chat model with bound documents (or text) to read before answering."""
        return self.model_copy(update={"context": context})

    # -- BaseChatModel ---------------------------------------------------------------------------------
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the model's own tokenizer (so `get_num_tokens` and `get_num_tokens_from_messages` count
        what this model reads, not GPT-2 tokens); `custom_get_token_ids` still wins when set."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self.wim.backend.encode_text(check_text(text, "text")))

    @property
    def _llm_type(self) -> str:
        return "wim-chat"

    @property
    def model_name(self) -> str:
        return self.wim.model_name

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self.wim_overrides()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="huggingface",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_max_tokens=self._answer_budget(kwargs),
        )
        temperature = self.temperature if self.temperature is not None else self._sampling(kwargs).temperature
        params["ls_temperature"] = temperature if self._sampling(kwargs).do_sample else 0.0
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config = ensure_config(config)
        capture = _RunCapture(config)
        token = _STREAM_RUN.set(capture)
        try:
            yield from super().stream(input, with_handler(config, capture), stop=stop, **kwargs)
        finally:
            with contextlib.suppress(ValueError):  # the consumer may close us from another context
                _STREAM_RUN.reset(token)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config = ensure_config(config)
        capture = _RunCapture(config)
        token = _STREAM_RUN.set(capture)
        try:
            async for chunk in super().astream(input, with_handler(config, capture), stop=stop, **kwargs):
                yield chunk
        finally:
            with contextlib.suppress(ValueError):
                _STREAM_RUN.reset(token)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream, cut = self._start(messages, stop, kwargs)
        relay = _child_relay(stream, run_manager)
        error: BaseException | None = None
        try:
            for ev in stream:
                _emit(run_manager, ev)
                if relay is not None:
                    relay.child_runs(ev)
                if isinstance(ev, AnswerToken) and (text := cut.push(ev.text)):
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        except GeneratorExit:
            raise  # the consumer stopped early: not an error of the run
        except BaseException as exc:
            error = exc
            raise
        finally:
            stream.close()
            if relay is not None:
                relay.close(error)
        yield from self._closing_chunks(stream, cut)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # The engine steps in a worker thread; events reach async handlers (astream_events) on this loop.
        stream, cut = self._start(messages, stop, kwargs)
        relay = _async_child_relay(stream, run_manager)
        error: BaseException | None = None
        events = stream.aiter()
        try:
            async for ev in events:
                await _aemit(run_manager, ev)
                if relay is not None:
                    await relay.child_runs(ev)
                if isinstance(ev, AnswerToken) and (text := cut.push(ev.text)):
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        except BaseException as exc:
            error = exc
            raise
        finally:
            await events.aclose()
            if relay is not None:
                await relay.close(error)
        for chunk in self._closing_chunks(stream, cut):
            yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _start(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        """Validate everything and plan the run (errors raise here, before any model compute)."""
        check_known(kwargs, _CALL_KWARGS, what="ChatWiM call keyword argument")
        kwargs = dict(kwargs)
        bound = kwargs.pop("context", None)
        context, question = self._inputs(messages, bound if bound is not None else self.context)
        stops = tuple(stop or self.stop or ())  # the core ends the answer's decoding at the first one
        overrides = {**self.wim_overrides(**kwargs), "sampling": self._sampling(kwargs), "answer_stop": stops}
        # The cut here only starts the message at its first visible character, as `WiMResult.answer` does.
        return self.wim.stream(context, question, **overrides), StopCut([])

    def _closing_chunks(self, stream: Any, cut: StopCut) -> Iterator[ChatGenerationChunk]:
        if text := cut.flush():
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        if stream.result is None:
            raise WiMInputError("the WiM run was cancelled before it answered")
        yield ChatGenerationChunk(message=self._last_chunk(stream.result))

    # -- helpers ---------------------------------------------------------------------------------------
    def _last_chunk(self, r: WiMResult) -> AIMessageChunk:
        """No text: the usage, the model name and the whole run, on the chunk that closes the stream."""
        t = r.tokens
        # input_tokens is the whole prompt, as LangChain defines it; what the document cache supplied is cache_read.
        read = t.input_total
        written = t.margin_generated + t.classifier_generated + t.answer_generated
        usage = UsageMetadata(input_tokens=read, output_tokens=written, total_tokens=read + written)  # type: ignore[typeddict-item]
        if t.cache_read:
            usage["input_token_details"] = InputTokenDetails(cache_read=t.cache_read)
        meta = {
            "model_name": r.model,
            "model_provider": "huggingface",
            "finish_reason": "stop",
            "wim": r.model_dump(mode="json", exclude={"answer"}),
        }
        return AIMessageChunk(content="", usage_metadata=usage, response_metadata=meta, chunk_position="last")

    def _sampling(self, kwargs: dict[str, Any]) -> SamplingConfig:
        base = kwargs.get("sampling") or self.setting("sampling") or self.wim.config.sampling
        if isinstance(base, dict):
            base = SamplingConfig(**base)
        if self.temperature is None:
            return base
        if self.temperature == 0:
            return base.model_copy(update={"do_sample": False})
        return base.model_copy(update={"do_sample": True, "temperature": self.temperature})

    def _answer_budget(self, kwargs: dict[str, Any]) -> int:
        return kwargs.get("max_tokens") or self.max_tokens or self.wim.config.answer_max_new_tokens

    @staticmethod
    def _inputs(messages: Sequence[BaseMessage], bound: Any) -> tuple[Any, str]:
        """(engine context, question) from the messages, by the convention in the module docstring."""
        if not messages or not isinstance(messages[-1], HumanMessage):
            last = type(messages[-1]).__name__ if messages else "nothing"
            raise WiMInputError(
                f"ChatWiM answers the last human message, but the last message is {last}. End the messages with a "
                "HumanMessage holding the question."
            )
        question = messages[-1].text
        docs: list[Any] = []
        if isinstance(bound, str):
            docs.append(InputDocument(bound, "context"))
        elif isinstance(bound, Sequence | Document):
            docs.extend(to_engine_context(bound))
        elif bound is not None:
            raise WiMInputError(f"ChatWiM context must be text or documents, not {type(bound).__name__}.")
        system = "\n\n".join(m.text for m in messages if isinstance(m, SystemMessage) and m.text.strip())
        if system:
            docs.append(InputDocument(system, "system"))
        turns = [m for m in messages[:-1] if not isinstance(m, SystemMessage) and m.text.strip()]
        if turns:
            lines = [f"{'User' if isinstance(m, HumanMessage) else 'Assistant'}: {m.text}" for m in turns]
            docs.append(InputDocument("Conversation so far:\n" + "\n".join(lines), "conversation"))
        if not docs:
            raise WiMInputError(
                "ChatWiM got a question but no context to read: put the text in a SystemMessage, bind documents "
                "with ChatWiM(context=docs) / chat.with_context(docs), or pass invoke(messages, context=docs)."
            )
        return docs, question


# `invoke`/`ainvoke` give `_generate` this run's manager. `stream`/`astream` call `_stream` without one
# (langchain-core's design), so ChatWiM's own `stream`/`astream` learn the run's id from a handler (`_RunCapture`)
# and address the events to it. Other paths without a run manager (`invoke` with `streaming=True`) send the events
# to the enclosing runnable's run, as `dispatch_custom_event` does.
class _RunCapture(BaseCallbackHandler):
    """Learns the id of the chat-model run a `stream`/`astream` call starts; holds that call's config."""

    run_inline = True

    def __init__(self, config: RunnableConfig) -> None:
        self.config = config
        self.run_id: UUID | None = None
        self._manager: Any = None
        self._amanager: Any = None

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self.run_id is None:
            self.run_id = run_id

    def emit(self, name: str, data: Any) -> None:
        if self._manager is None:
            self._manager = get_callback_manager_for_config(self.config)
        self._manager.on_custom_event(name, data, run_id=self.run_id)

    async def aemit(self, name: str, data: Any) -> None:
        if self._amanager is None:
            self._amanager = get_async_callback_manager_for_config(self.config)
        await self._amanager.on_custom_event(name, data, run_id=self.run_id)


_STREAM_RUN: ContextVar[_RunCapture | None] = ContextVar("wim_chat_stream_run", default=None)


def _parent_config() -> RunnableConfig | None:
    config = ensure_config()
    return config if getattr(config.get("callbacks"), "parent_run_id", None) is not None else None


def _child_manager(run_id: UUID, parent: Any, cls: type[T]) -> T:
    """A callback manager for runs nested in the chat-model run `run_id` (what `get_child()` gives a chain run; an
    LLM run manager has none): its inheritable handlers, tags and metadata."""
    manager = cls(handlers=[], parent_run_id=run_id)
    manager.set_handlers(parent.inheritable_handlers)
    manager.add_tags(parent.inheritable_tags)
    manager.add_metadata(parent.inheritable_metadata)
    return manager


def _chat_run(run_manager: Any, config_manager: Any) -> tuple[UUID, Any] | None:
    """(chat run id, its callback manager): the run manager when LangChain passed one, else the run a
    `stream`/`astream` call started (`_RunCapture`) with the managers of that call's config."""
    if run_manager is not None:
        return run_manager.run_id, run_manager
    capture = _STREAM_RUN.get()
    if capture is None or capture.run_id is None:
        return None
    return capture.run_id, config_manager(capture.config)


def _child_relay(stream: WiMStream, run_manager: CallbackManagerForLLMRun | None) -> EventRelay | None:
    """Margin (and classification) child runs under this chat-model run, as `WiMChain` has them; the chat run itself
    is the answer, so there is no answer child run. None where the chat run is unknown."""
    found = _chat_run(run_manager, get_callback_manager_for_config)
    if found is None:
        return None
    children = _child_manager(found[0], found[1], CallbackManager)
    return EventRelay({"callbacks": children}, stream, answer_run=False)


def _async_child_relay(stream: WiMStream, run_manager: AsyncCallbackManagerForLLMRun | None) -> AsyncEventRelay | None:
    found = _chat_run(run_manager, get_async_callback_manager_for_config)
    if found is None:
        return None
    children = _child_manager(found[0], found[1], AsyncCallbackManager)
    return AsyncEventRelay({"callbacks": children}, stream, answer_run=False)


def _emit(run_manager: CallbackManagerForLLMRun | None, ev: Any) -> None:
    """A WiM event as a custom event of this chat-model run (what `CallbackManager.on_custom_event` sends)."""
    if run_manager is None:
        capture = _STREAM_RUN.get()
        if capture is not None and capture.run_id is not None:
            capture.emit(event_name(ev), event_payload(ev))
        elif (config := _parent_config()) is not None:
            dispatch_custom_event(event_name(ev), event_payload(ev), config=config)
        return
    handle_event(
        run_manager.handlers,
        "on_custom_event",
        "ignore_custom_event",
        event_name(ev),
        event_payload(ev),
        run_id=run_manager.run_id,
        tags=run_manager.tags,
        metadata=run_manager.metadata,
    )


async def _aemit(run_manager: AsyncCallbackManagerForLLMRun | None, ev: Any) -> None:
    if run_manager is None:
        capture = _STREAM_RUN.get()
        if capture is not None and capture.run_id is not None:
            await capture.aemit(event_name(ev), event_payload(ev))
        elif (config := _parent_config()) is not None:
            await adispatch_custom_event(event_name(ev), event_payload(ev), config=config)
        return
    await ahandle_event(
        run_manager.handlers,
        "on_custom_event",
        "ignore_custom_event",
        event_name(ev),
        event_payload(ev),
        run_id=run_manager.run_id,
        tags=run_manager.tags,
        metadata=run_manager.metadata,
    )
