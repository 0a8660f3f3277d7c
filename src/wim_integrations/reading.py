"""Reading: one run of the WiM algorithm as an iterator of events (`WiMStream`), with its reading loops.

The loop is chosen from the backend's capabilities: step by step (any backend), or in groups of segments whose margins
are decoded together (packed rows: one masked pass in process, concurrent requests on a server). A document cache is
used where the backend keeps keys/values in this process."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .analysis import WiMSummary
from .backends.base import (
    GenerationRequest,
    LocalKVBackend,
    PackedBackend,
    PackedRequest,
    PackedRow,
    PromptAside,
    local_kv_view,
    packed_view,
)
from .classifier import MarginClassifier
from .config import WiMConfig
from .doc_cache import DocumentCache, Lease, PrefilledDocument, document_key
from .errors import WiMCancelled
from .events import (
    AnswerStarted,
    AnswerToken,
    ContextDocument,
    Finished,
    Margin,
    MarginToken,
    MarginWritten,
    ModelCall,
    SegmentInfo,
    SegmentRead,
    Timings,
    TokenCounts,
    Verdict,
    WiMEvent,
    WiMResult,
)
from .planning import Plan
from .relevance import MarginDraft, PMIScorer, SegmentPMIScorer, lexical_score
from .segmenter import Context, Segment
from .stopping import stop_rule
from .textstream import TextDeltas
from .verdicts import split_inline

if TYPE_CHECKING:
    from .engine import WiM


@dataclass
class _RunState:
    timings: Timings
    tokens: TokenCounts
    margins: list[Margin]
    read: int = 0
    classifier: MarginClassifier | None = None  # created on the first margin to judge
    pmi: PMIScorer | None = None  # likewise, for classification="pmi"
    # classification="segment_pmi": the margin prompt computed at a segment's end, kept for the next segment's score
    prompt_asides: dict[int, PromptAside] = field(default_factory=dict)
    margin_heads: dict[int, PromptAside] = field(default_factory=dict)  # segment end -> margin head keys/values
    prompt_cached: int = 0  # template / margin-head tokens taken from the document cache (not in tokens.prompt)


class WiMStream:
    """Iterator of a run's events, with early exit.

    `answer_now()`: stop reading further segments and answer from what was read so far (events continue with
    the answer). `cancel()`: stop at the next step; no answer, no `Finished`. `result` is set after `Finished`.
    """

    def __init__(self, wim: WiM, plan: Plan) -> None:
        self.wim = wim
        self.plan = plan
        # Typed views of the backend where its capabilities allow them (None: that path is not taken).
        self._packed = packed_view(wim.backend)
        self._kv = local_kv_view(wim.backend)
        self._stop = stop_rule(plan.config.margin_stop, wim.backend.decode)  # None: margins end at the stop token
        self.result: WiMResult | None = None
        self._answer_now = threading.Event()
        self._cancel = threading.Event()
        self._lease: tuple[DocumentCache, str, Lease] | None = None  # held while this run prefills a document
        self._events = self._run()

    def answer_now(self) -> None:
        self._answer_now.set()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[WiMEvent]:
        return self

    def __next__(self) -> WiMEvent:
        return next(self._events)

    def close(self) -> None:
        self._cancel.set()
        self._events.close()

    async def aiter(self) -> AsyncGenerator[WiMEvent, None]:
        """Drive this stream from a worker thread, one event at a time; cancelling the task cancels the run."""
        done = object()
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                # A plain executor future, not a task: `asyncio.run` cancels every pending task at shutdown, and a
                # cancelled `to_thread` task looks done while its thread is still inside the generator.
                step = functools.partial(contextvars.copy_context().run, next, self._events, done)
                pending = loop.run_in_executor(None, step)
                event = await asyncio.shield(pending)
                pending = None
                if event is done:
                    return
                yield event
        finally:
            self._cancel.set()
            if pending is None or pending.done():
                self._events.close()
            else:  # the generator is executing in the worker: close it once that step returns, even if cancelled again
                pending.add_done_callback(lambda _: self._events.close())
                await asyncio.wait([pending])

    # -- the algorithm ---------------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise WiMCancelled()

    def _run(self) -> Generator[WiMEvent, None, None]:
        try:
            yield from self._steps()
        except WiMCancelled:
            return
        finally:
            self._release_document()

    def _release_document(self) -> None:
        """Let runs waiting for this run's prefill of the document go on (they find it stored, or prefill it)."""
        if self._lease is not None:
            doc_cache, key, lease = self._lease
            self._lease = None
            doc_cache.release(key, lease)

    def _steps(self) -> Iterator[WiMEvent]:
        wim, plan, cfg = self.wim, self.plan, self.plan.config
        b = wim.backend
        segments = plan.context.segments
        n = len(segments)
        timings, tokens = Timings(), TokenCounts(context=plan.context.n_tokens)
        margins: list[Margin] = []
        t_start = time.perf_counter()

        run = _RunState(timings, tokens, margins)
        kv = self._kv
        doc_cache = wim.document_cache if kv is not None and cfg.reuse_document_cache else None
        key = document_key(kv.cache_namespace, plan.full_ids) if kv is not None and doc_cache is not None else ""
        stored: PrefilledDocument | None = None
        if doc_cache is not None:  # single flight: a run prefilling this document now is waited for
            stored, lease = doc_cache.acquire(key, cancelled=self._cancel.is_set)
            self._lease = (doc_cache, key, lease) if lease is not None else None
            self._check_cancel()
        if stored is not None and kv is not None:
            cache = kv.fork_cache(stored.cache)
            kv.reserve(cache, plan.peak_tokens)  # if this question outgrows the stored room, one copy, not several
            if stored.margin_head_ids == tuple(plan.margin_head_ids):
                run.margin_heads = dict(stored.margin_heads)
            timings.context_cache = "hit"
            run.prompt_cached += len(plan.head_ids)
        else:
            cache = b.new_cache()
            if kv is not None:  # one allocation for the whole run: no growth copying the cache (memory peak)
                kv.reserve(cache, plan.peak_tokens)
            t0 = time.perf_counter()
            b.prefill(cache, plan.head_ids)
            timings.prefill_seconds += time.perf_counter() - t0
            tokens.prompt += len(plan.head_ids)
            timings.context_cache = "miss" if doc_cache is not None else "off"
        store = functools.partial(self._store_document, doc_cache, key, cache, run) if doc_cache is not None else None
        if self._packed is not None and (cfg.margin_batch_size > 1 or stored is not None):
            reading = self._read_batched(self._packed, cache, run, prefilled=stored is not None, store=store)
        else:
            reading = self._read_sequential(cache, run, store=store)
        read_seconds: dict[int, float] = {}  # segment index -> prefill seconds, for the result's segment records
        with contextlib.closing(reading):  # closed with this run, as `yield from` would
            for event in reading:
                if isinstance(event, SegmentRead):
                    read_seconds[event.segment_index] = event.seconds
                if self._lease is not None:
                    self._lease[0].progress(self._lease[2])
                yield event
        self._release_document()  # stored by now if it could be: nobody waits for this run's answer
        read = run.read
        # A reused cache holds the whole document; answer from the segments actually read.
        if read < n:
            b.rollback(cache, plan.segment_ends[read - 1] if read else len(plan.head_ids))

        self._check_cancel()
        relevant = [m for m in margins if m.relevant]
        final_ids = wim.final_prompt_ids(plan.analysis or plan.question, relevant, n)
        tokens.answer_prompt = len(final_ids)
        yield AnswerStarted(
            n_relevant_margins=len(relevant),
            segments_read=read,
            n_segments=n,
            prompt=b.decode(final_ids),
            prompt_tokens=len(final_ids),
        )
        t0 = time.perf_counter()
        deltas = TextDeltas.for_backend(b)
        for tok in b.generate(cache, GenerationRequest(final_ids, cfg.answer_max_new_tokens, cfg.sampling)):
            self._check_cancel()
            if delta := deltas.push(tok):
                yield AnswerToken(text=delta)
        if delta := deltas.flush():
            yield AnswerToken(text=delta)
        timings.answer_seconds = time.perf_counter() - t0
        tokens.answer_generated = len(deltas.ids)
        tokens.cache_read = run.prompt_cached + (tokens.context if stored is not None else 0)
        tokens.input_total = tokens.context + tokens.prompt + run.prompt_cached + tokens.answer_prompt
        timings.total_seconds = time.perf_counter() - t_start
        outcome = dict(
            answer=deltas.text.strip(),
            margins=margins,
            n_segments=n,
            segments_read=read,
            stopped_early=read < n,
            timings=timings,
            tokens=tokens,
            model=b.name,
            segments=_segment_records(segments, read_seconds),
            documents=_document_records(plan.context),
            context_text=plan.context.text,
        )
        if plan.analysis is not None:
            task = plan.analysis
            self.result = WiMSummary(question="", instruction=task.instruction, schema_name=task.schema_name, **outcome)
        else:
            self.result = WiMResult(question=plan.question, **outcome)
        yield Finished(result=self.result)

    def _read_sequential(
        self, cache: Any, run: _RunState, store: Callable[[], object] | None
    ) -> Generator[WiMEvent, None, None]:
        """The interactive loop: prefill a segment, write its margin token by token, roll back, classify."""
        plan, cfg, b = self.plan, self.plan.config, self.wim.backend
        timings, tokens, margins = run.timings, run.tokens, run.margins
        n = plan.n_segments
        for seg in plan.context.segments:
            if self._answer_now.is_set():
                break
            self._check_cancel()
            t0 = time.perf_counter()
            b.prefill(cache, seg.token_ids)
            dt = time.perf_counter() - t0
            timings.prefill_seconds += dt
            run.read += 1
            yield self._segment_read(seg, dt)
            if self._answer_now.is_set():
                break

            # Margin: instruction + generation on top of the cache, then roll back to the segment's end.
            t0 = time.perf_counter()
            end_of_segment = b.cache_length(cache)
            deltas = TextDeltas.for_backend(b)
            logprobs: list[float] = []
            request = GenerationRequest(plan.margin_prompt_ids, cfg.margin_max_new_tokens, cfg.sampling, logprobs)
            try:
                tokens_out = b.generate(cache, request)
                for tok in tokens_out:
                    self._check_cancel()
                    if delta := deltas.push(tok):
                        yield MarginToken(segment_index=seg.index, text=delta)
                    if self._stop is not None and self._stop(deltas.ids):
                        tokens_out.close()  # complete: no further decoding step
                        break
                if delta := deltas.flush():
                    yield MarginToken(segment_index=seg.index, text=delta)
                if self._kv is not None:  # keys/values of this prompt kept for later, where the backend holds them
                    if store is not None and plan.margin_head_length:  # for later questions (document cache)
                        heads = plan.margin_head_ids
                        run.margin_heads[end_of_segment] = self._kv.take_aside(cache, end_of_segment, heads)
                    if cfg.classification == "segment_pmi":  # the next margin is scored without its segment from here
                        prompt_head = plan.margin_prompt_ids[:-1]
                        run.prompt_asides[end_of_segment] = self._kv.take_aside(cache, end_of_segment, prompt_head)
            finally:
                b.rollback(cache, end_of_segment)
            t_margin = time.perf_counter() - t0
            timings.margin_seconds += t_margin
            tokens.prompt += len(plan.margin_prompt_ids)
            tokens.margin_generated += len(deltas.ids)

            t0 = time.perf_counter()
            [judged] = self._judge([self._draft(seg, deltas, logprobs)], run, cache)
            t_classify = time.perf_counter() - t0
            timings.classify_seconds += t_classify
            margin = self._margin(seg, judged, len(deltas.ids), t_margin + t_classify)
            margins.append(margin)
            yield self._written(seg, margin, judged)
        if store is not None and run.read == n:  # the whole context read; the cache is back at its end
            store()

    def _read_batched(
        self, b: PackedBackend, cache: Any, run: _RunState, *, prefilled: bool, store: Callable[[], object] | None
    ) -> Generator[WiMEvent, None, None]:
        """Groups of `margin_batch_size` segments: prefill the group, then decode all its margins in one packed batch
        over the shared cache (row j sees the cache up to the end of segment j) and classify them in one pass.

        Each SegmentRead comes as its segment is read; then every margin of the group streams live (MarginTokens
        interleaved step by step, each naming its segment); then the group's MarginWritten in order. An `answer_now`
        during a group's reading still writes the margins of the segments read before it (the step-by-step loop had
        written them already) but none for the segment it came after. With `prefilled` the cache already holds the
        whole document (document cache hit) and segments are only "read" for their margins. Where the backend keeps
        keys/values in this process each margin prompt is computed as the segment is read (see
        `_margin_prompt_aside`); elsewhere (a server) the rows carry their whole prompts."""
        plan, cfg = self.plan, self.plan.config
        timings, tokens = run.timings, run.tokens
        segments, ends, n = plan.context.segments, plan.segment_ends, plan.n_segments
        size = cfg.margin_batch_size
        rule = self._stop
        done = (lambda _, ids: rule(ids)) if rule is not None else None  # a row ends once its margin is complete
        for g0 in range(0, n, size):
            group: list[Segment] = []
            asides: list[PromptAside | None] = []
            t_asides = 0.0
            for seg in segments[g0 : g0 + size]:
                if self._answer_now.is_set():
                    break
                self._check_cancel()
                dt = 0.0
                if not prefilled:
                    t0 = time.perf_counter()
                    b.prefill(cache, seg.token_ids)
                    dt = time.perf_counter() - t0
                    timings.prefill_seconds += dt
                run.read += 1
                yield self._segment_read(seg, dt)
                if self._answer_now.is_set():  # read but not annotated, as in the step-by-step loop
                    break
                t0 = time.perf_counter()
                asides.append(
                    self._margin_prompt_aside(self._kv, cache, seg, run, prefilled, keep_head=store is not None)
                    if self._kv is not None
                    else None
                )
                t_asides += time.perf_counter() - t0
                if store is not None and not prefilled and seg.index == n - 1:
                    store()
                group.append(seg)
            if not group:
                return

            t0 = time.perf_counter() - t_asides  # the margins' time includes their prompts computed aside
            rows = [PackedRow(ends[seg.index], plan.margin_prompt_ids, a) for seg, a in zip(group, asides, strict=True)]
            deltas = [TextDeltas.for_backend(b) for _ in rows]
            logprobs: list[list[float]] = [[] for _ in rows]
            steps = b.generate_packed(
                cache, PackedRequest(rows, cfg.margin_max_new_tokens, cfg.sampling, done, logprobs)
            )
            try:  # every margin streams live: its tokens are interleaved with the group's others, step by step
                for step in steps:
                    self._check_cancel()
                    for i, tok in step:
                        if delta := deltas[i].push(tok):
                            yield MarginToken(segment_index=group[i].index, text=delta)
            finally:
                steps.close()
            for seg, d in zip(group, deltas, strict=True):  # text held back as a possibly partial character
                if delta := d.flush():
                    yield MarginToken(segment_index=seg.index, text=delta)
            t_margin = time.perf_counter() - t0
            timings.margin_seconds += t_margin
            # Prompt tokens computed in this run: all of each margin prompt, but for heads reused from a document cache.
            reused = sum(len(a.prompt_ids) for a in asides if a is not None and a.last_logits is None)
            tokens.prompt += sum(len(r.prompt_ids) for r in rows) - reused
            run.prompt_cached += reused
            tokens.margin_generated += sum(len(d.ids) for d in deltas)

            t0 = time.perf_counter()
            drafts = [self._draft(seg, d, lp) for seg, d, lp in zip(group, deltas, logprobs, strict=True)]
            if cfg.classification == "segment_pmi":
                run.prompt_asides.update(
                    (ends[seg.index], a) for seg, a in zip(group, asides, strict=True) if a is not None
                )
            judged = self._judge(drafts, run, cache)
            t_classify = time.perf_counter() - t0
            timings.classify_seconds += t_classify
            share = (t_margin + t_classify) / len(rows)  # one batch: each margin gets an equal share of its time
            for seg, d, judgement in zip(group, deltas, judged, strict=True):
                margin = self._margin(seg, judgement, len(d.ids), share)
                run.margins.append(margin)
                yield self._written(seg, margin, judgement)
            if self._answer_now.is_set():
                return

    def _store_document(self, doc_cache: DocumentCache, key: str, cache: Any, run: _RunState) -> None:
        """Keep the context as read, with the margin heads computed so far, for later questions: a compact copy, so
        the entry holds (and is charged) only the document's own keys/values, not the room this run reserved for its
        peak (a fork would keep that whole buffer alive: 3x the document's bytes on a short one)."""
        b, heads = self._kv, dict(run.margin_heads)
        assert b is not None  # a document cache is only used where the backend holds keys/values here
        nbytes = b.filled_nbytes(cache) + sum(b.aside_nbytes(h) for h in heads.values())
        if not doc_cache.fits(nbytes):  # too large to keep: no copy made
            return
        doc_cache.put(key, PrefilledDocument(b.compact_cache(cache), tuple(self.plan.margin_head_ids), heads), nbytes)
        self._release_document()  # waiting runs start from the stored entry now

    def _margin_prompt_aside(
        self, b: LocalKVBackend, cache: Any, seg: Segment, run: _RunState, prefilled: bool, *, keep_head: bool
    ) -> PromptAside:
        """A segment's margin prompt, computed now on a cache that ends at the segment: plain causal attention over
        exactly its prefix, rather than a masked pass over the whole document with the other rows later.

        Reading, the cache does end there: the whole prompt is computed, and with `keep_head` (a document cache will
        store this read) its question-independent head is kept. From a reused document the stored head is enough
        (the rest is computed in the packed pass); without one, the document is cut at the segment in a fork (a copy
        of that prefix, dropped after)."""
        plan = self.plan
        end = plan.segment_ends[seg.index]
        if not prefilled:
            aside = b.prefill_aside(cache, plan.margin_prompt_ids)
            if keep_head and plan.margin_head_length:
                run.margin_heads[end] = b.aside_head(aside, plan.margin_head_length)
            return aside
        if end in run.margin_heads:
            return run.margin_heads[end]
        at_segment_end = b.fork_cache(cache)
        b.rollback(at_segment_end, end)
        return b.prefill_aside(at_segment_end, plan.margin_prompt_ids)

    def _segment_read(self, seg: Segment, seconds: float) -> SegmentRead:
        return SegmentRead(
            segment_index=seg.index,
            n_segments=self.plan.n_segments,
            char_span=(seg.start_char, seg.end_char),
            token_span=(seg.start_token, seg.end_token),
            n_tokens=seg.n_tokens,
            documents=list(seg.documents),
            seconds=seconds,
        )

    def _written(self, seg: Segment, margin: Margin, judged: _Judgement) -> MarginWritten:
        head = len(self.plan.head_ids) if seg.index == 0 else 0
        return MarginWritten(
            segment_index=seg.index,
            n_segments=self.plan.n_segments,
            margin=margin,
            prompt_tokens=head + seg.n_tokens + len(self.plan.margin_prompt_ids),
            judge_call=judged.call,
        )

    def _draft(self, seg: Segment, deltas: TextDeltas, logprobs: list[float]) -> MarginDraft:
        start = self.plan.segment_ends[seg.index - 1] if seg.index else len(self.plan.head_ids)
        return MarginDraft(deltas.text.strip(), list(deltas.ids), logprobs, seg.text, start)

    def _margin(self, seg: Segment, judged: _Judgement, n_tokens: int, secs: float) -> Margin:
        cfg = self.plan.config
        return Margin(
            segment_index=seg.index,
            text=judged.text,
            relevant=judged.verdict in ("yes", "unclassified")
            or (judged.verdict == "unknown" and cfg.keep_unknown_verdicts),
            verdict=judged.verdict,
            classifier_output=judged.reply,
            score=judged.score,
            char_span=(seg.start_char, seg.end_char),
            token_span=(seg.start_token, seg.end_token),
            documents=list(seg.documents),
            n_tokens=n_tokens,
            seconds=secs,
            data=judged.data,
            parse_error=judged.parse_error,
        )

    def _margin_classifier(self, cfg: WiMConfig) -> MarginClassifier:
        """The run's model judge: the auxiliary model for 'auxiliary', else WiM's own model."""
        backend = self.wim.classifier if cfg.classification == "auxiliary" else self.wim.backend
        assert backend is not None
        frame = backend.chat_frame()
        template = self.wim.prompts.classification
        return MarginClassifier(backend, frame, template, self.plan.question, cfg.classifier_max_new_tokens)

    def _judge(self, drafts: list[MarginDraft], run: _RunState, cache: Any) -> list[_Judgement]:
        """Verdict (and score) per margin; a group is judged in one pass. `cache` holds the text read so far."""
        cfg, task = self.plan.config, self.plan.analysis
        mode = cfg.classification
        if task is not None:  # notes: all kept; validated against the schema when there is one
            parsed = [task.parse(d.text) for d in drafts]
            return [
                _Judgement(d.text, "unclassified", data=data, parse_error=error)
                for d, (data, error) in zip(drafts, parsed, strict=True)
            ]
        if mode == "none":
            return [_Judgement(d.text, "unclassified") for d in drafts]
        if mode == "inline":
            return [_Judgement(text, verdict) for verdict, text in (split_inline(d.text) for d in drafts)]
        if cfg.scored:
            scores = self._scores(drafts, run, cache)
            return [
                _Judgement(d.text, "yes" if s >= cfg.threshold else "no", score=s)
                for d, s in zip(drafts, scores, strict=True)
            ]
        if run.classifier is None:
            run.classifier = self._margin_classifier(cfg)
        judge = run.classifier
        before = judge.generated_tokens
        replies = judge.classify([d.text for d in drafts], self._check_cancel)
        run.tokens.classifier_generated += judge.generated_tokens - before
        return [
            _Judgement(d.text, verdict, reply, call=_judge_call(judge, d.text, reply))
            for d, (verdict, reply) in zip(drafts, replies, strict=True)
        ]

    def _scores(self, drafts: list[MarginDraft], run: _RunState, cache: Any) -> list[float]:
        mode, plan = self.plan.config.classification, self.plan
        if mode == "lexical":
            return [lexical_score(d.text, d.segment_text, plan.question) for d in drafts]
        self._check_cancel()
        if mode == "segment_pmi":
            scores = SegmentPMIScorer(self.wim.backend, plan.margin_prompt_ids).score(cache, drafts, run.prompt_asides)
            last = max(d.segment_start for d in drafts)  # only the newest prompt is needed again (next segment)
            run.prompt_asides = {k: a for k, a in run.prompt_asides.items() if k > last}
            return scores
        if mode == "pmi":
            if run.pmi is None:
                run.pmi = PMIScorer(self.wim.backend, plan.head_ids, plan.margin_prompt_ids)
            return run.pmi.score(drafts)
        if run.classifier is None:
            run.classifier = self._margin_classifier(self.plan.config)
        return run.classifier.calibrated_scores([d.text for d in drafts])


@dataclass(frozen=True)
class _Judgement:
    text: str
    verdict: Verdict
    reply: str | None = None  # the classifier's reply (same_model / auxiliary)
    score: float | None = None  # score-based modes
    data: dict[str, Any] | None = None  # an analysis note validated against its schema
    parse_error: str | None = None  # why it did not validate
    call: ModelCall | None = None  # the classifier's call (same_model / auxiliary)


def _judge_call(judge: MarginClassifier, margin: str, reply: str) -> ModelCall:
    ids = judge.prompt_ids(margin)
    backend = judge.backend
    return ModelCall(
        model=backend.name,
        prompt=backend.decode(ids),
        prompt_tokens=len(ids),
        output_tokens=len(backend.encode_text(reply)),
    )


def _segment_records(segments: Sequence[Segment], read_seconds: dict[int, float]) -> list[SegmentInfo]:
    return [
        SegmentInfo(
            index=seg.index,
            char_span=(seg.start_char, seg.end_char),
            token_span=(seg.start_token, seg.end_token),
            read=seg.index in read_seconds,
            seconds=read_seconds.get(seg.index, 0.0),
        )
        for seg in segments
    ]


def _document_records(ctx: Context) -> list[ContextDocument]:
    return [
        ContextDocument(index=i, id=doc.id, metadata=dict(doc.metadata), char_span=(start, start + len(doc.text)))
        for i, (doc, start) in enumerate(zip(ctx.documents, ctx.doc_starts, strict=True))
    ]
