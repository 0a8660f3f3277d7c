"""WiM engine events as LangChain custom events, and child runs that make margins visible in traces.

Custom event names are ``"wim_" + event.type`` (``wim_segment_read``, ``wim_margin_token``, ``wim_margin_written``,
``wim_answer_started``, ``wim_answer_token``, ``wim_finished``); the payload is ``event.model_dump(mode="json")``.
LangSmith's tracer ignores custom events, so each margin, its classification and the final answer are also recorded
as child ``llm`` runs (``wim_margin``, then ``wim_classify`` when a classifier call was made, and ``wim_answer``)
of the WiMChain run.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.outputs import Generation, LLMResult
from langchain_core.runnables import RunnableConfig
from pydantic import TypeAdapter

from ..engine import Plan
from ..events import (
    AnswerStarted,
    AnswerToken,
    Finished,
    MarginToken,
    MarginWritten,
    SegmentRead,
    WiMEvent,
)

EVENT_PREFIX = "wim_"
EVENT_NAMES = tuple(
    EVENT_PREFIX + t
    for t in ("segment_read", "margin_token", "margin_written", "answer_started", "answer_token", "finished")
)
MARGIN_RUN, CLASSIFY_RUN, ANSWER_RUN = "wim_margin", "wim_classify", "wim_answer"

_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(WiMEvent)


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


def _doc_ids(event: SegmentRead | MarginWritten) -> list[str | None]:
    spans = event.documents if isinstance(event, SegmentRead) else event.margin.documents
    return [d.doc_id for d in spans]


class _RunSpecs:
    """What each child run is started and ended with; shared by the sync and async relays."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def margin_start(self, ev: SegmentRead) -> tuple[list[str], dict[str, Any], list[str]]:
        seg = self.plan.context.segments[ev.segment_index]
        meta = {
            "wim_segment_index": ev.segment_index,
            "wim_n_segments": ev.n_segments,
            "wim_char_span": list(ev.char_span),
            "wim_doc_ids": _doc_ids(ev),
        }
        return [seg.text], meta, ["wim", MARGIN_RUN]

    @staticmethod
    def margin_end(ev: MarginWritten) -> LLMResult:
        m = ev.margin
        info = {"verdict": m.verdict, "relevant": m.relevant, "segment_index": m.segment_index, "n_tokens": m.n_tokens}
        return LLMResult(generations=[[Generation(text=m.text, generation_info=info)]])

    @staticmethod
    def classify(ev: MarginWritten) -> tuple[list[str], dict[str, Any], LLMResult] | None:
        m = ev.margin
        if m.classifier_output is None:  # 'inline' and 'none' modes have no separate classification call
            return None
        info = {"verdict": m.verdict, "relevant": m.relevant}
        meta = {"wim_segment_index": m.segment_index, "wim_verdict": m.verdict}
        return [m.text], meta, LLMResult(generations=[[Generation(text=m.classifier_output, generation_info=info)]])

    def answer_start(self, ev: AnswerStarted) -> tuple[list[str], dict[str, Any], list[str]]:
        meta = {
            "wim_n_relevant_margins": ev.n_relevant_margins,
            "wim_segments_read": ev.segments_read,
            "wim_n_segments": ev.n_segments,
        }
        return [self.plan.question], meta, ["wim", ANSWER_RUN]

    @staticmethod
    def answer_end(ev: Finished) -> LLMResult:
        r = ev.result
        info = {"stopped_early": r.stopped_early, "segments_read": r.segments_read}
        return LLMResult(generations=[[Generation(text=r.answer, generation_info=info)]])


def _child(manager: Any, tags: list[str], meta: dict[str, Any]) -> Any:
    child = manager.get_child()
    child.add_tags(tags, inherit=False)
    child.add_metadata(meta, inherit=False)
    return child


_SERIALIZED = {"name": "WiM", "id": ["wim_integrations", "WiM"]}


# One callback action of a relay, for the open child run: ("start", prompts, meta, tags) opens it, ("token", text)
# streams into it, ("end", result) ends it, ("child", prompts, meta, tags, result) is a whole child run of its own.
_Action = tuple[Any, ...]


class _Relay:
    """Which callbacks each engine event makes, once for the sync and the async relay (which only execute them)."""

    def __init__(self, config: RunnableConfig, plan: Plan) -> None:
        self.config, self.specs = config, _RunSpecs(plan)
        self.open: Any = None  # the child run (margin or answer) events are streaming into

    def actions(self, ev: Any) -> list[_Action]:
        if isinstance(ev, SegmentRead):
            return [("start", *self.specs.margin_start(ev))]
        if isinstance(ev, AnswerStarted):
            return [("start", *self.specs.answer_start(ev))]
        if self.open is None:
            return []
        if isinstance(ev, MarginToken | AnswerToken):
            return [("token", ev.text)]
        if isinstance(ev, MarginWritten):
            actions: list[_Action] = [("end", self.specs.margin_end(ev))]
            if spec := self.specs.classify(ev):
                prompts, meta, out = spec
                actions.append(("child", prompts, meta, ["wim", CLASSIFY_RUN], out))
            return actions
        if isinstance(ev, Finished):
            return [("end", self.specs.answer_end(ev))]
        return []

    @staticmethod
    def stopped(error: BaseException | None) -> BaseException:
        return error or RuntimeError("WiM run stopped before this step finished")


class EventRelay(_Relay):
    """Turns one run's engine events into custom events and child runs (sync callbacks)."""

    def __init__(self, run_manager: CallbackManagerForChainRun, config: RunnableConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.rm = run_manager

    def _start(self, prompts: list[str], meta: dict[str, Any], tags: list[str]) -> CallbackManagerForLLMRun:
        cm: CallbackManager = _child(self.rm, tags, meta)
        return cm.on_llm_start(_SERIALIZED, prompts, name=tags[-1])[0]

    def __call__(self, ev: Any) -> None:
        dispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        for kind, *args in self.actions(ev):
            if kind == "start":
                self.open = self._start(*args)
            elif kind == "token":
                self.open.on_llm_new_token(*args)
            elif kind == "end":
                self.open.on_llm_end(*args)
                self.open = None
            else:
                self._start(*args[:3]).on_llm_end(args[3])

    def close(self, error: BaseException | None) -> None:
        """End a child run left open by an error or an early stop."""
        if self.open is not None:
            self.open.on_llm_error(self.stopped(error))
            self.open = None


class AsyncEventRelay(_Relay):
    """`EventRelay` on async callback managers (`adispatch_custom_event`)."""

    def __init__(self, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, plan: Plan) -> None:
        super().__init__(config, plan)
        self.rm = run_manager

    async def _start(self, prompts: list[str], meta: dict[str, Any], tags: list[str]) -> AsyncCallbackManagerForLLMRun:
        cm: AsyncCallbackManager = _child(self.rm, tags, meta)
        return (await cm.on_llm_start(_SERIALIZED, prompts, name=tags[-1]))[0]

    async def __call__(self, ev: Any) -> None:
        await adispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        for kind, *args in self.actions(ev):
            if kind == "start":
                self.open = await self._start(*args)
            elif kind == "token":
                await self.open.on_llm_new_token(*args)
            elif kind == "end":
                await self.open.on_llm_end(*args)
                self.open = None
            else:
                await (await self._start(*args[:3])).on_llm_end(args[3])

    async def close(self, error: BaseException | None) -> None:
        """End a child run left open by an error or an early stop."""
        if self.open is not None:
            await self.open.on_llm_error(self.stopped(error))
            self.open = None
