"""WiM engine events as LangChain custom events, and child runs that make margins visible in traces.

Custom event names are ``"wim_" + event.type`` (``wim_segment_read``, ``wim_margin_token``, ``wim_margin_written``,
``wim_answer_started``, ``wim_answer_token``, ``wim_finished``); the payload is ``event.model_dump(mode="json")``.
LangSmith's tracer ignores custom events, so each margin, its classification and the final answer are also recorded
as child ``llm`` runs (``wim_margin``, then ``wim_classify`` when a classifier call was made, and ``wim_answer``)
of the WiMChain run. Inside a LangGraph node (the run's metadata names a ``langgraph_node``) the answer run is a
chat-model run whose tokens are `AIMessageChunk`s, which is what LangGraph's ``stream_mode="messages"`` streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    BaseCallbackHandler,
    CallbackManager,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_async_callback_manager_for_config, get_callback_manager_for_config
from pydantic import TypeAdapter

from ..engine import WiMStream
from ..events import AnswerStarted, Finished, MarginWritten, ModelCall, SegmentRead, WiMEvent
from ..reading.steps import ANSWER, Close, Judged, Open, Step, StepAction, StepTracker, Stream

EVENT_PREFIX = "wim_"
EVENT_NAMES = tuple(
    EVENT_PREFIX + t
    for t in ("segment_read", "margin_token", "margin_written", "answer_started", "answer_token", "finished")
)
MARGIN_RUN, CLASSIFY_RUN, ANSWER_RUN = "wim_margin", "wim_classify", "wim_answer"

_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(WiMEvent)
_Start = tuple[list[str], dict[str, Any], str, dict[str, Any]]  # a child run's (prompts, metadata, name, params)
# One call on the child runs: (kind, step, argument, chat): kind "start" (argument: its _Start), "token" (the text),
# "end" (the LLMResult), "error" (the exception) or "child" (a whole run of its own: (_Start, LLMResult)).
_Call = tuple[str, Step, Any, bool]
_STOPPED = "WiM run stopped before this step finished"


def event_name(event: Any) -> str:
    return EVENT_PREFIX + event.type


def event_payload(event: Any) -> dict[str, Any]:
    """JSON-safe payload (what a UI or a LangSmith-less log gets)."""
    return event.model_dump(mode="json")


def parse_event(name: str, data: Any) -> Any | None:
    """The typed engine event back from a custom event, or None if it is not a WiM event."""
    if name not in EVENT_NAMES or not isinstance(data, dict):
        return None
    return _EVENT_ADAPTER.validate_python(data)


def with_handler(config: RunnableConfig, handler: BaseCallbackHandler) -> RunnableConfig:
    """`config` with one more inheritable callback handler (callbacks may be None, a list or a manager)."""
    callbacks = config.get("callbacks")
    if callbacks is None:
        callbacks = [handler]
    elif isinstance(callbacks, list):
        callbacks = [*callbacks, handler]
    else:  # a callback manager (what nested runnables and LangGraph nodes get): add to a copy
        callbacks = callbacks.copy()
        callbacks.add_handler(handler, inherit=True)
    return {**config, "callbacks": callbacks}


def _doc_ids(event: SegmentRead | MarginWritten) -> list[str | None]:
    spans = event.documents if isinstance(event, SegmentRead) else event.margin.documents
    return [d.doc_id for d in spans]


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}


def _llm_result(
    text: str, info: dict[str, Any], usage: dict[str, int], model: str, message_id: str | None = None
) -> LLMResult:
    """An `llm` run's output with its token usage where LangSmith and `UsageMetadataCallbackHandler` read it."""
    message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": model}, id=message_id)
    token_usage = {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
    }
    return LLMResult(
        generations=[[ChatGeneration(message=message, generation_info=info)]],
        llm_output={"token_usage": token_usage, "model_name": model},
    )


class _RunSpecs:
    """What each child run is started and ended with, from the events; shared by the sync and async relays.

    Token usage counts what each step fed into the model and generated, as the events report it: a margin reads its
    segment (the first one also the chat head) and the margin prompt (`MarginWritten.prompt_tokens`), and writes the
    margin; a classification is the classifier's call (`MarginWritten.judge_call`); the answer reads the answer
    prompt (`AnswerStarted.prompt`, the context already in the cache) and writes the answer.
    """

    def __init__(self, stream: WiMStream) -> None:
        self.plan, self.model = stream.plan, stream.model_name
        self.answer_prompt_tokens = 0

    def _params(self, step: str, model: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(ls_* metadata, invocation params) of one child run."""
        cfg = self.plan.config
        ls: dict[str, Any] = {
            "ls_provider": "huggingface",
            "ls_model_name": model,
            "ls_model_type": "llm",
            "ls_max_tokens": max_tokens,
        }
        if cfg.sampling.do_sample:
            ls["ls_temperature"] = cfg.sampling.temperature
        params = {
            "_type": "wim",
            "wim_step": step,
            "model": model,
            "max_new_tokens": max_tokens,
            **cfg.model_dump(mode="json"),
            "segment_tokens": self.plan.segment_tokens,
        }
        return ls, params

    def margin_start(self, ev: SegmentRead) -> _Start:
        ls, params = self._params("margin", self.model, self.plan.config.margin_max_new_tokens)
        meta = {
            **ls,
            "wim_segment_index": ev.segment_index,
            "wim_n_segments": ev.n_segments,
            "wim_char_span": list(ev.char_span),
            "wim_doc_ids": _doc_ids(ev),
        }
        return [self.plan.context.segments[ev.segment_index].text], meta, MARGIN_RUN, params

    def margin_end(self, ev: MarginWritten) -> LLMResult:
        m = ev.margin
        info = {
            "verdict": m.verdict,
            "relevant": m.relevant,
            "score": m.score,
            "segment_index": m.segment_index,
            "n_tokens": m.n_tokens,
        }
        return _llm_result(m.text, info, _usage(ev.prompt_tokens, m.n_tokens), self.model)

    def classify(self, ev: MarginWritten, call: ModelCall) -> tuple[_Start, LLMResult]:
        m = ev.margin
        ls, params = self._params("classify", call.model, self.plan.config.classifier_max_new_tokens)
        info = {"verdict": m.verdict, "relevant": m.relevant, "score": m.score}
        meta = {**ls, "wim_segment_index": m.segment_index, "wim_verdict": m.verdict}
        usage = _usage(call.prompt_tokens, call.output_tokens)
        out = _llm_result(m.classifier_output or "", info, usage, call.model)
        return ([call.prompt], meta, CLASSIFY_RUN, params), out

    def answer_start(self, ev: AnswerStarted) -> _Start:
        self.answer_prompt_tokens = ev.prompt_tokens
        ls, params = self._params("answer", self.model, self.plan.config.answer_max_new_tokens)
        meta = {
            **ls,
            "wim_n_relevant_margins": ev.n_relevant_margins,
            "wim_segments_read": ev.segments_read,
            "wim_n_segments": ev.n_segments,
            "wim_question": self.plan.question,
        }
        return [ev.prompt], meta, ANSWER_RUN, params

    def answer_end(self, ev: Finished) -> LLMResult:
        r = ev.result
        info = {"stopped_early": r.stopped_early, "segments_read": r.segments_read}
        return _llm_result(r.answer, info, _usage(self.answer_prompt_tokens, r.tokens.answer_generated), r.model)


def _message_id(run: Any) -> str:
    """The id chat models give the message of a run (its chunks and the final message share it)."""
    return f"lc_run--{run.run_id}"


def _chat_chunk(run: Any, text: str) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=text, id=_message_id(run)))


def _with_message_id(result: LLMResult, run: Any) -> LLMResult:
    """The final message under its chunks' id, so a consumer merging by id (LangGraph) does not repeat it."""
    gen = result.generations[0][0]
    assert isinstance(gen, ChatGeneration)
    message = gen.message.model_copy(update={"id": _message_id(run)})
    generation = ChatGeneration(message=message, generation_info=gen.generation_info)
    return LLMResult(generations=[[generation]], llm_output=result.llm_output)


_SERIALIZED = {"name": "WiM", "id": ["wim_integrations", "WiM"]}


class _Relay:
    """The child runs of one WiM run: the step lifecycle (`steps.StepTracker`) mapped to callback-manager calls, once
    for the sync and the async relay (which only execute them).

    Child runs get their callback manager from the run's config like any nested runnable
    (`get_callback_manager_for_config`), so configure hooks such as `collect_runs()` and tracing from the
    environment see them, as well as inheritable handlers.
    """

    def __init__(self, config: RunnableConfig, stream: WiMStream, *, answer_run: bool = True) -> None:
        self.config, self.specs = config, _RunSpecs(stream)
        self.steps = StepTracker(answer=answer_run)  # answer_run=False under ChatWiM: its own run is the answer
        self.open: dict[Step, Any] = {}  # step -> the child run its events stream into
        # In a LangGraph node the answer is a chat-model run: its tokens then reach stream_mode="messages".
        self.chat_answer = "langgraph_node" in (config.get("metadata") or {})

    def calls(self, actions: Sequence[StepAction], error: BaseException | None = None) -> list[_Call]:
        """What each step action does to the child runs: start one, stream a token into it, end it, end it as
        stopped, or a whole run of its own (a classification)."""
        calls: list[_Call] = []
        for a in actions:
            chat = self.chat_answer and a.step == ANSWER
            if isinstance(a, Open):
                ev = a.event
                spec = self.specs.margin_start(ev) if isinstance(ev, SegmentRead) else self.specs.answer_start(ev)
                calls.append(("start", a.step, spec, chat))
            elif isinstance(a, Stream):
                calls.append(("token", a.step, a.text, chat))
            elif isinstance(a, Close):
                end = a.event
                result = self.specs.margin_end(end) if isinstance(end, MarginWritten) else self.specs.answer_end(end)
                calls.append(("end", a.step, result, chat))
            elif isinstance(a, Judged):
                calls.append(("child", a.step, self.specs.classify(a.event, a.call), False))
            else:
                calls.append(("error", a.step, error or RuntimeError(_STOPPED), False))
        return calls

    def token_args(self, step: Step, text: str, chat: bool) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Arguments of `on_llm_new_token` for a step's run (a chat run gets a message chunk too)."""
        return (text,), ({"chunk": _chat_chunk(self.open[step], text)} if chat else {})

    def end_result(self, step: Step, result: LLMResult, chat: bool) -> LLMResult:
        return _with_message_id(result, self.open[step]) if chat else result

    @staticmethod
    def _child_manager(manager: Any, meta: dict[str, Any], name: str) -> Any:
        cm = manager.copy()
        cm.add_tags(["wim", name], inherit=False)
        cm.add_metadata(meta, inherit=False)
        return cm


class EventRelay(_Relay):
    """Turns one run's engine events into custom events and child runs (sync callbacks)."""

    def __init__(self, config: RunnableConfig, stream: WiMStream, *, answer_run: bool = True) -> None:
        super().__init__(config, stream, answer_run=answer_run)
        self.manager: CallbackManager = get_callback_manager_for_config(config)

    def _start(self, spec: _Start, *, chat: bool = False) -> Any:
        prompts, meta, name, params = spec
        cm = self._child_manager(self.manager, meta, name)
        if chat:
            messages = [[HumanMessage(content=p) for p in prompts]]
            return cm.on_chat_model_start(_SERIALIZED, messages, name=name, invocation_params=params)[0]
        return cm.on_llm_start(_SERIALIZED, prompts, name=name, invocation_params=params)[0]

    def __call__(self, ev: Any) -> None:
        dispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        self.child_runs(ev)

    def child_runs(self, ev: Any) -> None:
        """Only the child runs of `ev` (a caller that sends the custom events itself: ChatWiM)."""
        self._execute(self.calls(self.steps.actions(ev)))

    def close(self, error: BaseException | None) -> None:
        """End the child runs left open by an error or an early stop."""
        self._execute(self.calls(self.steps.abort_all(), error))

    def _execute(self, calls: list[_Call]) -> None:
        for kind, step, arg, chat in calls:
            if kind == "start":
                self.open[step] = self._start(arg, chat=chat)
            elif kind == "token":
                targs, tkwargs = self.token_args(step, arg, chat)
                self.open[step].on_llm_new_token(*targs, **tkwargs)
            elif kind == "end":
                result = self.end_result(step, arg, chat)  # names the run's message: before it leaves `open`
                self.open.pop(step).on_llm_end(result)
            elif kind == "error":
                self.open.pop(step).on_llm_error(arg)
            else:
                spec, result = arg
                self._start(spec).on_llm_end(result)


class AsyncEventRelay(_Relay):
    """`EventRelay` on async callback managers (`adispatch_custom_event`)."""

    def __init__(self, config: RunnableConfig, stream: WiMStream, *, answer_run: bool = True) -> None:
        super().__init__(config, stream, answer_run=answer_run)
        self.manager: AsyncCallbackManager = get_async_callback_manager_for_config(config)

    async def _start(self, spec: _Start, *, chat: bool = False) -> Any:
        prompts, meta, name, params = spec
        cm = self._child_manager(self.manager, meta, name)
        if chat:
            messages = [[HumanMessage(content=p) for p in prompts]]
            return (await cm.on_chat_model_start(_SERIALIZED, messages, name=name, invocation_params=params))[0]
        return (await cm.on_llm_start(_SERIALIZED, prompts, name=name, invocation_params=params))[0]

    async def __call__(self, ev: Any) -> None:
        await adispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        await self.child_runs(ev)

    async def child_runs(self, ev: Any) -> None:
        await self._execute(self.calls(self.steps.actions(ev)))

    async def close(self, error: BaseException | None) -> None:
        await self._execute(self.calls(self.steps.abort_all(), error))

    async def _execute(self, calls: list[_Call]) -> None:
        for kind, step, arg, chat in calls:
            if kind == "start":
                self.open[step] = await self._start(arg, chat=chat)
            elif kind == "token":
                targs, tkwargs = self.token_args(step, arg, chat)
                await self.open[step].on_llm_new_token(*targs, **tkwargs)
            elif kind == "end":
                result = self.end_result(step, arg, chat)
                await self.open.pop(step).on_llm_end(result)
            elif kind == "error":
                await self.open.pop(step).on_llm_error(arg)
            else:
                spec, result = arg
                await (await self._start(spec)).on_llm_end(result)
