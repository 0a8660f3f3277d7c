"""`WiMSynthesizer`: a LlamaIndex response synthesizer that reads the retrieved nodes with WiM.

Swap it in for any synthesizer: `RetrieverQueryEngine(retriever, response_synthesizer=WiMSynthesizer(wim))` or
`index.as_query_engine(llm=WiMLLM(wim), response_synthesizer=WiMSynthesizer(wim))`. The nodes become WiM documents
(id = node id), so every margin in `response.metadata["wim"]["margins"]` names the nodes it was written on.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any, Literal

from llama_index.core.base.response.schema import (
    RESPONSE_TYPE,
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms import LLM
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.response_synthesizers.base import BaseSynthesizer, QueryTextType
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ..config import WiMConfig
from ..engine import WiM, WiMStream
from ..errors import WiMInputError
from ..events import AnswerToken, Finished, MarginWritten, WiMResult
from ..inputs import InputDocument
from ..prompts import PromptSet
from .llm import WiMLLM
from .prompt_templates import prompt_templates, updated_prompt_set
from .tracing import RunTracer

dispatcher = get_dispatcher(__name__)

ReadingOrder = Literal["document", "score"]
# The one key of `response.metadata` that holds WiM's data: {"margins": [...], "result": WiMResult JSON or None}.
METADATA_KEY = "wim"


def reading_order(nodes: Sequence[NodeWithScore], order: ReadingOrder = "document") -> list[NodeWithScore]:
    """Nodes in the order WiM reads them, each node once.

    "document": grouped by source document (`ref_doc_id`; documents in the order of their best-ranked node), then
    by start offset inside the document, like a person reading the passages in place. "score": retrieval order.
    """
    if order not in ("document", "score"):
        raise WiMInputError(f"order must be 'document' or 'score', not {order!r}.")
    seen: set[str] = set()
    unique: list[NodeWithScore] = []
    for n in nodes:  # the first occurrence of each node
        if n.node.node_id not in seen:
            seen.add(n.node.node_id)
            unique.append(n)
    if order == "score":
        return unique
    groups: dict[str, int] = {}
    for n in unique:
        groups.setdefault(n.node.ref_doc_id or f"node:{n.node.node_id}", len(groups))

    def key(item: tuple[int, NodeWithScore]) -> tuple[int, float, int]:
        i, n = item
        idx = getattr(n.node, "start_char_idx", None)  # text nodes have it, other nodes do not
        start = idx if isinstance(idx, int) else math.inf
        return groups[n.node.ref_doc_id or f"node:{n.node.node_id}"], start, i

    return [n for _, n in sorted(enumerate(unique), key=key)]


def wim_result(response: Any) -> WiMResult:
    """The `WiMResult` behind a WiM response, e.g. to render it: `wim_result(response).to_html("report.html")`."""
    meta = (getattr(response, "metadata", None) or {}).get(METADATA_KEY) or {}
    result = meta.get("result_object")
    if isinstance(result, WiMResult):
        return result
    if "result_object" in meta:
        raise WiMInputError(
            "this response has no finished WiM run: no nodes were retrieved, or it is a streaming response whose "
            "tokens have not all been read yet (read them first)."
        )
    raise WiMInputError(
        "this response did not come from WiM (its metadata has no WiM result); query through WiMQueryEngine or a "
        "query engine with WiMSynthesizer."
    )


def node_documents(
    nodes: Sequence[NodeWithScore], order: ReadingOrder, metadata_mode: MetadataMode
) -> list[InputDocument]:
    """The nodes as WiM documents, in reading order: text as an LLM would see it, id = node id."""
    return [
        InputDocument(
            n.node.get_content(metadata_mode=metadata_mode), id=n.node.node_id, metadata=dict(n.node.metadata)
        )
        for n in reading_order(nodes, order)
    ]


def margin_record(margin: Any) -> dict[str, Any]:
    """A margin as JSON-ready data, with the ids of the nodes it was written on."""
    return {**margin.model_dump(mode="json"), "node_ids": [d.doc_id for d in margin.documents if d.doc_id]}


class WiMSynthesizer(BaseSynthesizer):
    """Answer from retrieved nodes with Writing in the Margins.

    Args:
        wim: the reader; defaults to the one inside `llm` when that is a `WiMLLM`, else `WiM.default()`.
        llm: the LLM LlamaIndex sees on this synthesizer; defaults to a `WiMLLM` on the same model (never
            `Settings.llm`, which would look for OpenAI).
        order: "document" (default) or "score"; see `reading_order`.
        streaming: return `StreamingResponse` / `AsyncStreamingResponse` with the answer's tokens.
        metadata_mode: which node metadata goes into the text WiM reads (LlamaIndex's LLM mode by default).
        config, prompts, **config_overrides: WiM settings for this synthesizer (e.g. margin_max_new_tokens=32).
    """

    def __init__(
        self,
        wim: WiM | None = None,
        *,
        llm: LLM | None = None,
        order: ReadingOrder = "document",
        streaming: bool = False,
        callback_manager: CallbackManager | None = None,
        metadata_mode: MetadataMode = MetadataMode.LLM,
        empty_response: str | None = None,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        **config_overrides: Any,
    ) -> None:
        if wim is None:
            wim = llm.wim if isinstance(llm, WiMLLM) else WiM.default()
        reading_order([], order)  # validate now
        # Other prompts, same loaded model and document cache: nodes read before are still a cache hit.
        self._wim = wim if prompts is None else wim.with_options(prompts=prompts)
        base = config or wim.config
        self._config = base.with_updates(**config_overrides) if config_overrides else base
        self._order: ReadingOrder = order
        self._metadata_mode = metadata_mode
        super().__init__(
            llm=llm or WiMLLM(wim),
            callback_manager=callback_manager,
            streaming=streaming,
            empty_response=empty_response,
        )

    @property
    def wim(self) -> WiM:
        return self._wim

    @property
    def config(self) -> WiMConfig:
        return self._config

    # -- prompts (PromptMixin) -------------------------------------------------------------------------
    def _get_prompts(self) -> PromptDictType:
        return prompt_templates(self._wim.prompts)

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        self._wim = self._wim.with_options(prompts=updated_prompt_set(self._wim.prompts, dict(prompts_dict)))

    # -- inputs ----------------------------------------------------------------------------------------
    def _documents(self, nodes: Sequence[NodeWithScore]) -> list[InputDocument]:
        return node_documents(nodes, self._order, self._metadata_mode)

    def _start(
        self, docs: list[InputDocument], query_str: str, overrides: dict[str, Any]
    ) -> tuple[WiMStream, RunTracer]:
        """Validate and plan now (bad input raises here, before any compute); the tracer hangs off the open span."""
        stream = self._wim.stream(docs, self._reading_task(query_str), config=self._config, **overrides)
        tracer = RunTracer(
            dispatcher,
            self,
            active_span_id.get(),
            self._callback_manager,
            query_str,
            {d.id: d.text for d in docs if d.id},
        )
        return stream, tracer

    def _reading_task(self, query_str: str) -> Any:
        """What WiM is asked: the query itself here; a summary or analysis in `WiMSummarySynthesizer`."""
        return query_str

    def _prepare(
        self, query: QueryTextType, nodes: list[NodeWithScore], additional: Sequence[NodeWithScore] | None
    ) -> tuple[QueryBundle, list[NodeWithScore], dict[str, Any]]:
        """The query bundle, the response's source nodes and its metadata (filled in as the run goes)."""
        source_nodes = list(nodes) + list(additional or [])
        query = QueryBundle(query_str=query) if isinstance(query, str) else query
        return query, source_nodes, self._metadata(source_nodes)

    @staticmethod
    def _metadata(source_nodes: Sequence[NodeWithScore]) -> dict[str, Any]:
        # LlamaIndex's usual {node_id: metadata} entries, and everything of WiM's under the one key "wim".
        meta: dict[str, Any] = {n.node.node_id: n.node.metadata for n in source_nodes}
        meta[METADATA_KEY] = {"margins": [], "result": None, "result_object": None}
        return meta

    # -- driving a run ---------------------------------------------------------------------------------
    def _events(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> Generator[Any, None, None]:
        run = _TracedRun(stream, tracer, meta)
        try:
            for event in stream:
                yield run.see(event)
        except BaseException as exc:
            tracer.abort(exc)
            raise
        finally:
            run.close()

    async def _aevents(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> AsyncGenerator[Any, None]:
        run = _TracedRun(stream, tracer, meta)
        try:
            async for event in stream.aiter():  # the core runs each step in a worker thread
                yield run.see(event)
        except BaseException as exc:
            tracer.abort(exc)
            raise
        finally:
            run.close()

    def _run(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> WiMResult:
        for _ in self._events(stream, tracer, meta):
            pass
        assert stream.result is not None
        return stream.result

    async def _arun(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> WiMResult:
        async for _ in self._aevents(stream, tracer, meta):
            pass
        assert stream.result is not None
        return stream.result

    def _token_gen(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> Generator[str, None, None]:
        # Read later, often outside `synthesize`: run each step in the context captured now, so contextvars
        # (active span, legacy callback trace) are those of the synthesize call.
        ctx = contextvars.copy_context()
        events = self._events(stream, tracer, meta)
        done = object()

        def gen() -> Generator[str, None, None]:
            try:
                while (event := ctx.run(next, events, done)) is not done:
                    if isinstance(event, AnswerToken):
                        yield event.text
            finally:
                ctx.run(events.close)

        return gen()

    async def _atoken_gen(
        self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]
    ) -> AsyncGenerator[str, None]:
        events = self._aevents(stream, tracer, meta)
        try:
            async for event in events:
                if isinstance(event, AnswerToken):
                    yield event.text
        finally:
            await events.aclose()

    # -- BaseSynthesizer API ---------------------------------------------------------------------------
    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> Any:
        """Answer from plain text chunks (in the given order): a str, or a token generator when streaming."""
        stream, tracer = self._start([InputDocument(t) for t in text_chunks], query_str, response_kwargs)
        meta = self._metadata([])
        if self._streaming:
            return self._token_gen(stream, tracer, meta)
        return self._run(stream, tracer, meta).answer

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> Any:
        docs = [InputDocument(t) for t in text_chunks]
        stream, tracer = await asyncio.to_thread(self._start, docs, query_str, response_kwargs)
        meta = self._metadata([])
        if self._streaming:
            return self._atoken_gen(stream, tracer, meta)
        return (await self._arun(stream, tracer, meta)).answer

    def _empty(self, query: QueryTextType, is_async: bool) -> RESPONSE_TYPE:
        meta = self._metadata([])
        response: RESPONSE_TYPE
        if not self._streaming:
            response = Response(self._empty_response, metadata=meta)
        elif is_async:
            response = AsyncStreamingResponse(self._empty_response_agenerator(), metadata=meta)
        else:
            response = StreamingResponse(self._empty_response_generator(), metadata=meta)
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    def synthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        dispatcher.event(SynthesizeStartEvent(query=query))
        if not nodes:
            return self._empty(query, is_async=False)
        query, source_nodes, meta = self._prepare(query, nodes, additional_source_nodes)
        stream, tracer = self._start(self._documents(nodes), query.query_str, response_kwargs)
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as cb_event:
            response: RESPONSE_TYPE
            if self._streaming:
                response = StreamingResponse(self._token_gen(stream, tracer, meta), source_nodes, metadata=meta)
            else:
                result = self._run(stream, tracer, meta)
                response = Response(result.answer, source_nodes, metadata=meta)
            cb_event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    @dispatcher.span
    async def asynthesize(
        self,
        query: QueryTextType,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> RESPONSE_TYPE:
        dispatcher.event(SynthesizeStartEvent(query=query))
        if not nodes:
            return self._empty(query, is_async=True)
        query, source_nodes, meta = self._prepare(query, nodes, additional_source_nodes)
        # Tokenizing a long context is real work too: keep it off the event loop.
        stream, tracer = await asyncio.to_thread(self._start, self._documents(nodes), query.query_str, response_kwargs)
        with self._callback_manager.event(
            CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}
        ) as cb_event:
            response: RESPONSE_TYPE
            if self._streaming:
                response = AsyncStreamingResponse(self._atoken_gen(stream, tracer, meta), source_nodes, metadata=meta)
            else:
                result = await self._arun(stream, tracer, meta)
                response = Response(result.answer, source_nodes, metadata=meta)
            cb_event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response


class _TracedRun:
    """What the sync and async event loops share: record each event in the response metadata and the trace, and on
    the way out close a run that did not finish (cancelled, failed or abandoned)."""

    def __init__(self, stream: WiMStream, tracer: RunTracer, meta: dict[str, Any]) -> None:
        self.stream, self.tracer, self.meta = stream, tracer, meta
        self.finished = False
        tracer.start(len(stream.plan.context.documents))

    def see(self, event: Any) -> Any:
        if isinstance(event, MarginWritten):
            self.meta[METADATA_KEY]["margins"].append(margin_record(event.margin))
        elif isinstance(event, Finished):
            self.meta[METADATA_KEY]["result"] = event.result.model_dump(mode="json")
            self.meta[METADATA_KEY]["result_object"] = event.result  # the object, to render it
        self.tracer.on_event(event)
        self.finished = isinstance(event, Finished)
        return event

    def close(self) -> None:
        if not self.finished:
            self.stream.close()
            self.tracer.abort(None)
