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


class EventRelay:
    """Turns one run's engine events into custom events and child runs (sync callbacks)."""

    def __init__(self, run_manager: CallbackManagerForChainRun, config: RunnableConfig, plan: Plan) -> None:
        self.rm, self.config, self.specs = run_manager, config, _RunSpecs(plan)
        self.open: CallbackManagerForLLMRun | None = None

    def _start(self, prompts: list[str], meta: dict[str, Any], tags: list[str]) -> CallbackManagerForLLMRun:
        cm: CallbackManager = _child(self.rm, tags, meta)
        return cm.on_llm_start(_SERIALIZED, prompts, name=tags[-1])[0]

    def __call__(self, ev: Any) -> None:
        dispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        if isinstance(ev, SegmentRead):
            self.open = self._start(*self.specs.margin_start(ev))
        elif isinstance(ev, MarginToken | AnswerToken) and self.open is not None:
            self.open.on_llm_new_token(ev.text)
        elif isinstance(ev, MarginWritten) and self.open is not None:
            if spec := self.specs.classify(ev):
                prompts, meta, out = spec
                self.open.on_llm_end(self.specs.margin_end(ev))
                self.open = None
                self._start(prompts, meta, ["wim", CLASSIFY_RUN]).on_llm_end(out)
            else:
                self.open.on_llm_end(self.specs.margin_end(ev))
                self.open = None
        elif isinstance(ev, AnswerStarted):
            self.open = self._start(*self.specs.answer_start(ev))
        elif isinstance(ev, Finished) and self.open is not None:
            self.open.on_llm_end(self.specs.answer_end(ev))
            self.open = None

    def close(self, error: BaseException | None) -> None:
        """End a child run left open by an error or an early stop."""
        if self.open is not None:
            self.open.on_llm_error(error or RuntimeError("WiM run stopped before this step finished"))
            self.open = None


class AsyncEventRelay:
    """The async twin of `EventRelay` (async callback managers, `adispatch_custom_event`)."""

    def __init__(self, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, plan: Plan) -> None:
        self.rm, self.config, self.specs = run_manager, config, _RunSpecs(plan)
        self.open: AsyncCallbackManagerForLLMRun | None = None

    async def _start(self, prompts: list[str], meta: dict[str, Any], tags: list[str]) -> AsyncCallbackManagerForLLMRun:
        cm: AsyncCallbackManager = _child(self.rm, tags, meta)
        return (await cm.on_llm_start(_SERIALIZED, prompts, name=tags[-1]))[0]

    async def __call__(self, ev: Any) -> None:
        await adispatch_custom_event(event_name(ev), event_payload(ev), config=self.config)
        if isinstance(ev, SegmentRead):
            self.open = await self._start(*self.specs.margin_start(ev))
        elif isinstance(ev, MarginToken | AnswerToken) and self.open is not None:
            await self.open.on_llm_new_token(ev.text)
        elif isinstance(ev, MarginWritten) and self.open is not None:
            if spec := self.specs.classify(ev):
                prompts, meta, out = spec
                await self.open.on_llm_end(self.specs.margin_end(ev))
                self.open = None
                await (await self._start(prompts, meta, ["wim", CLASSIFY_RUN])).on_llm_end(out)
            else:
                await self.open.on_llm_end(self.specs.margin_end(ev))
                self.open = None
        elif isinstance(ev, AnswerStarted):
            self.open = await self._start(*self.specs.answer_start(ev))
        elif isinstance(ev, Finished) and self.open is not None:
            await self.open.on_llm_end(self.specs.answer_end(ev))
            self.open = None

    async def close(self, error: BaseException | None) -> None:
        if self.open is not None:
            await self.open.on_llm_error(error or RuntimeError("WiM run stopped before this step finished"))
            self.open = None
