"""The WiM algorithm as a stream of typed events, free of any framework.

wim = WiM.default()
for event in wim.stream(context, question):
    ...
result = wim.run(context, question)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends.base import Backend, GenerationRequest, PackedRow, PromptAside
from .classifier import MarginClassifier
from .classify import split_inline
from .config import WiMConfig
from .doc_cache import DocumentCache, PrefilledDocument, document_key
from .errors import ContextTooLongError, WiMCancelled, WiMInputError
from .events import (
    AnswerStarted,
    AnswerToken,
    ContextDocument,
    Finished,
    Margin,
    MarginToken,
    MarginWritten,
    SegmentInfo,
    SegmentRead,
    Timings,
    TokenCounts,
    Verdict,
    WiMEvent,
    WiMResult,
)
from .prompts import ChatFrame, PromptSet, render, split_at_placeholder
from .relevance import MarginDraft, PMIScorer, SegmentPMIScorer, lexical_score
from .segmenter import Context, Segment, segment_context
from .textstream import TextDeltas

# Tokens a margin's label ("Margin note 3 (part 5 of 9):") adds in the final prompt; used for the budget check.
_LABEL_TOKENS = 16


def default_segment_tokens(window: int | None) -> int:
    """The paper used 4096-token segments on 128k models; smaller windows get window/8, at least 256."""
    if not window:
        return 4096
    return min(4096, max(256, window // 8))


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, validated and tokenized before any forward pass."""

    context: Context
    question: str
    config: WiMConfig
    head_ids: list[int]  # chat prefix + context opening
    margin_prompt_ids: list[int]  # instruction + question + chat suffix, appended after each segment
    segment_tokens: int
    # The margin prompt's first tokens, before the question: the same for every question, so a document cache keeps
    # their keys/values per segment and a later question computes only the rest.
    margin_head_length: int = 0

    @property
    def margin_head_ids(self) -> list[int]:
        return self.margin_prompt_ids[: self.margin_head_length]

    @property
    def n_segments(self) -> int:
        return len(self.context.segments)

    @property
    def full_ids(self) -> list[int]:
        """Every token the context prefill puts in the cache: what a reusable document cache is keyed on."""
        return list(self.head_ids) + [t for seg in self.context.segments for t in seg.token_ids]

    @property
    def segment_ends(self) -> list[int]:
        """Cache length at the end of each segment."""
        ends, pos = [], len(self.head_ids)
        for seg in self.context.segments:
            pos += seg.n_tokens
            ends.append(pos)
        return ends


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


class WiM:
    """A WiM reader on one model. Build once, reuse for many calls; thread-safe."""

    def __init__(
        self,
        backend: Backend,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        classifier: Backend | None = None,
        document_cache: DocumentCache | None = None,
    ) -> None:
        self.backend = backend
        # Prefilled contexts kept for later questions on the same document (None: every run prefills).
        self.document_cache = document_cache
        self.config = config or WiMConfig()
        self.prompts = prompts or PromptSet.default()
        self.classifier = classifier
        self.frame = ChatFrame.from_tokenizer(backend.tokenizer)
        self._classifier_frame = ChatFrame.from_tokenizer(classifier.tokenizer) if classifier else None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        classifier_model: str | None = None,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        document_cache: DocumentCache | None = None,
        **load_kwargs: Any,
    ) -> WiM:
        """Load a local model directory or a model already in the Hugging Face cache (offline by default)."""
        from .models import load_backend

        classifier = load_backend(classifier_model, **load_kwargs) if classifier_model else None
        return cls(
            load_backend(model, **load_kwargs),
            config=config,
            prompts=prompts,
            classifier=classifier,
            document_cache=document_cache,
        )

    @classmethod
    def default(
        cls, *, config: WiMConfig | None = None, document_cache: DocumentCache | None = None, **kwargs: Any
    ) -> WiM:
        """WiM on the embedded SmolLM2-135M-Instruct (converted once to a local cache on first use)."""
        from .models import load_default_backend

        return cls(load_default_backend(**kwargs), config=config, document_cache=document_cache)

    @property
    def model_name(self) -> str:
        return self.backend.name

    # -- planning --------------------------------------------------------------------------------------
    def plan(self, context: object, question: object, config: WiMConfig | None = None) -> Plan:
        """Validate inputs and settings, tokenize and segment. Raises `WiMInputError` with the fix."""
        cfg = config or self.config
        if not isinstance(question, str):
            raise WiMInputError(f"question must be a string, not {type(question).__name__}.")
        if not question.strip():
            raise WiMInputError("question is empty; pass the question WiM should answer.")
        if cfg.classification == "segment_pmi" and not getattr(self.backend, "supports_packed", False):
            if "classification" not in cfg.model_fields_set:  # the default: the closest score this model supports
                cfg = cfg.with_updates(classification="pmi")
                return self.plan(context, question, cfg)
            raise WiMInputError(
                f"classification='segment_pmi' scores each margin on the cache cut before its segment, which model "
                f"{self.backend.name!r} cannot do (sliding-window layers); use classification='pmi' instead."
            )
        if cfg.classification == "auxiliary" and self.classifier is None:
            raise WiMInputError(
                "classification='auxiliary' needs a classifier model; build WiM with classifier=... or "
                "WiM.from_pretrained(..., classifier_model=...), or pick 'same_model', 'inline' or 'none'."
            )
        b = self.backend
        head_ids = b.encode_template(self.frame.prefix) + b.encode_text(self.prompts.context_opening)
        instruction = self.prompts.margin_instruction_for(inline=cfg.classification == "inline", scope=cfg.margin_scope)
        before_question, from_question = split_at_placeholder(instruction, "question")
        margin_head_ids = b.encode_text(render(before_question, question=question))
        margin_prompt_ids = (
            margin_head_ids
            + b.encode_text(render(from_question, question=question))
            + b.encode_template(self.frame.suffix)
        )
        budget = cfg.segment_tokens or default_segment_tokens(b.max_context_tokens)
        if budget < len(margin_prompt_ids):
            raise WiMInputError(
                f"segment_tokens={budget} is smaller than the margin instruction ({len(margin_prompt_ids)} tokens); "
                f"use segment_tokens of at least {len(margin_prompt_ids)} (a few times more is sensible)."
            )
        with getattr(b, "tokenizer_lock", contextlib.nullcontext()):  # see HFBackend.tokenizer_lock
            ctx = segment_context(b.tokenizer, context, budget)
        self._check_window(ctx, question, cfg, head_ids, margin_prompt_ids)
        return Plan(ctx, question, cfg, head_ids, margin_prompt_ids, budget, len(margin_head_ids))

    def _check_window(
        self, ctx: Context, question: str, cfg: WiMConfig, head: list[int], margin_prompt: list[int]
    ) -> None:
        b = self.backend
        limits = [
            (n, what)
            for n, what in (
                (b.max_context_tokens, "context window"),
                (
                    getattr(b, "rollback_limit", None),
                    "sliding attention window (the cache cannot be rolled back past it)",
                ),
            )
            if n
        ]
        if not limits:
            return
        final_prompt = self._final_prompt_ids(question, [], len(ctx.segments))
        margins_worst = len(ctx.segments) * (cfg.margin_max_new_tokens + _LABEL_TOKENS)
        reading = len(head) + ctx.n_tokens
        need = reading + max(
            len(margin_prompt) + cfg.margin_max_new_tokens,
            len(final_prompt) + margins_worst + cfg.answer_max_new_tokens,
        )
        for limit, what in limits:
            if need > limit:
                raise ContextTooLongError(
                    f"WiM needs up to {need} tokens for this input but model {b.name!r} has a {what} of {limit} "
                    f"(over by {need - limit}): context {ctx.n_tokens}, prompts {len(head) + len(final_prompt)}, "
                    f"margins up to {margins_worst} ({len(ctx.segments)} x margin_max_new_tokens="
                    f"{cfg.margin_max_new_tokens} + labels), answer {cfg.answer_max_new_tokens}. Shorten the context, "
                    "lower margin_max_new_tokens/answer_max_new_tokens, or use a model with a longer window."
                )

    def _final_prompt_ids(self, question: str, margins: Sequence[Margin], n_segments: int) -> list[int]:
        b = self.backend
        if margins:
            block = "\n\n".join(
                f"Margin note {i} (part {m.segment_index + 1} of {n_segments}):\n{m.text}"
                for i, m in enumerate(margins, 1)
            )
        else:
            block = self.prompts.no_margins
        body = render(self.prompts.final_answer, margins=block, question=question)
        return b.encode_text(body) + b.encode_template(self.frame.suffix)

    # -- running ---------------------------------------------------------------------------------------
    def stream(
        self, context: object, question: object, *, config: WiMConfig | None = None, **overrides: Any
    ) -> WiMStream:
        """Start a run. Inputs are validated now (errors raise here); work happens as the stream is read."""
        cfg = (config or self.config).with_updates(**overrides) if overrides else (config or self.config)
        return WiMStream(self, self.plan(context, question, cfg))

    def run(self, context: object, question: object, *, config: WiMConfig | None = None, **overrides: Any) -> WiMResult:
        stream = self.stream(context, question, config=config, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    async def astream(
        self, context: object, question: object, *, config: WiMConfig | None = None, **overrides: Any
    ) -> AsyncIterator[WiMEvent]:
        """Async events: the model runs in a worker thread (contextvars copied), the event loop stays free."""
        stream = self.stream(context, question, config=config, **overrides)
        async for event in stream.aiter():
            yield event

    async def arun(
        self, context: object, question: object, *, config: WiMConfig | None = None, **overrides: Any
    ) -> WiMResult:
        stream = self.stream(context, question, config=config, **overrides)
        async for _ in stream.aiter():
            pass
        assert stream.result is not None
        return stream.result


class WiMStream:
    """Iterator of a run's events, with early exit.

    `answer_now()`: stop reading further segments and answer from what was read so far (events continue with
    the answer). `cancel()`: stop at the next step; no answer, no `Finished`. `result` is set after `Finished`.
    """

    def __init__(self, wim: WiM, plan: Plan) -> None:
        self.wim = wim
        self.plan = plan
        self.result: WiMResult | None = None
        self._answer_now = threading.Event()
        self._cancel = threading.Event()
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

    async def aiter(self) -> AsyncIterator[WiMEvent]:
        """Drive this stream from a worker thread, one event at a time; cancelling the task cancels the run."""
        done = object()
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(asyncio.to_thread(next, self._events, done))
                event = await asyncio.shield(pending)
                pending = None
                if event is done:
                    return
                yield event
        finally:
            self._cancel.set()
            if pending is not None and not pending.done():
                await asyncio.wait([pending])  # let the in-flight step finish before closing the generator
            self._events.close()

    # -- the algorithm ---------------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise WiMCancelled()

    def _run(self) -> Iterator[WiMEvent]:
        try:
            yield from self._steps()
        except WiMCancelled:
            return

    def _steps(self) -> Iterator[WiMEvent]:
        wim, plan, cfg = self.wim, self.plan, self.plan.config
        b = wim.backend
        segments = plan.context.segments
        n = len(segments)
        timings, tokens = Timings(), TokenCounts(context=plan.context.n_tokens)
        margins: list[Margin] = []
        t_start = time.perf_counter()

        run = _RunState(timings, tokens, margins)
        packed = bool(getattr(b, "supports_packed", False))
        doc_cache = wim.document_cache if packed and cfg.reuse_document_cache else None
        key = document_key(b.cache_namespace, plan.full_ids) if doc_cache is not None else ""
        stored: PrefilledDocument | None = doc_cache.get(key) if doc_cache is not None else None
        if stored is not None:
            cache = b.fork_cache(stored.cache)
            if stored.margin_head_ids == tuple(plan.margin_head_ids):
                run.margin_heads = dict(stored.margin_heads)
            timings.context_cache = "hit"
        else:
            cache = b.new_cache()
            t0 = time.perf_counter()
            b.prefill(cache, plan.head_ids)
            timings.prefill_seconds += time.perf_counter() - t0
            tokens.prompt += len(plan.head_ids)
            timings.context_cache = "miss" if doc_cache is not None else "off"
        store = functools.partial(self._store_document, doc_cache, key, cache, run) if doc_cache is not None else None
        if packed and (cfg.margin_batch_size > 1 or stored is not None):
            reading = self._read_batched(cache, run, prefilled=stored is not None, store=store)
        else:
            reading = self._read_sequential(cache, run, store=store)
        read_seconds: dict[int, float] = {}  # segment index -> prefill seconds, for the result's segment records
        with contextlib.closing(reading):  # closed with this run, as `yield from` would
            for event in reading:
                if isinstance(event, SegmentRead):
                    read_seconds[event.segment_index] = event.seconds
                yield event
        read = run.read
        # A reused cache holds the whole document; answer from the segments actually read.
        if read < n:
            b.rollback(cache, plan.segment_ends[read - 1] if read else len(plan.head_ids))

        self._check_cancel()
        relevant = [m for m in margins if m.relevant]
        yield AnswerStarted(n_relevant_margins=len(relevant), segments_read=read, n_segments=n)
        t0 = time.perf_counter()
        final_ids = wim._final_prompt_ids(plan.question, relevant, n)
        tokens.answer_prompt = len(final_ids)
        deltas = TextDeltas(b.decode)
        for tok in b.generate(cache, GenerationRequest(final_ids, cfg.answer_max_new_tokens, cfg.sampling)):
            self._check_cancel()
            if delta := deltas.push(tok):
                yield AnswerToken(text=delta)
        if delta := deltas.flush():
            yield AnswerToken(text=delta)
        timings.answer_seconds = time.perf_counter() - t0
        tokens.answer_generated = len(deltas.ids)
        timings.total_seconds = time.perf_counter() - t_start
        self.result = WiMResult(
            answer=deltas.text.strip(),
            question=plan.question,
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
        yield Finished(result=self.result)

    def _read_sequential(self, cache: Any, run: _RunState, store: Callable[[], object] | None) -> Iterator[WiMEvent]:
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
            deltas = TextDeltas(b.decode)
            logprobs: list[float] = []
            request = GenerationRequest(plan.margin_prompt_ids, cfg.margin_max_new_tokens, cfg.sampling, logprobs)
            try:
                for tok in b.generate(cache, request):
                    self._check_cancel()
                    if delta := deltas.push(tok):
                        yield MarginToken(segment_index=seg.index, text=delta)
                if delta := deltas.flush():
                    yield MarginToken(segment_index=seg.index, text=delta)
                if store is not None and plan.margin_head_length:  # kept for later questions (document cache)
                    run.margin_heads[end_of_segment] = b.take_aside(cache, end_of_segment, plan.margin_head_ids)
                if cfg.classification == "segment_pmi":  # the next margin is scored without its segment from here
                    prompt_head = plan.margin_prompt_ids[:-1]
                    run.prompt_asides[end_of_segment] = b.take_aside(cache, end_of_segment, prompt_head)
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
            yield MarginWritten(segment_index=seg.index, n_segments=n, margin=margin)
        if store is not None and run.read == n:  # the whole context read; the cache is back at its end
            store()

    def _read_batched(
        self, cache: Any, run: _RunState, *, prefilled: bool, store: Callable[[], object] | None
    ) -> Iterator[WiMEvent]:
        """Groups of `margin_batch_size` segments: prefill the group, then decode all its margins in one packed batch
        over the shared cache (row j sees the cache up to the end of segment j) and classify them in one pass.

        Events keep the per-segment order (SegmentRead, MarginToken*, MarginWritten); the first margin of a group
        streams live, the others are emitted once the group is done. With `prefilled` the cache already holds the
        whole document (document cache hit) and segments are only "read" for their margins."""
        plan, cfg, b = self.plan, self.plan.config, self.wim.backend
        timings, tokens = run.timings, run.tokens
        segments, ends, n = plan.context.segments, plan.segment_ends, plan.n_segments
        size = cfg.margin_batch_size
        for g0 in range(0, n, size):
            group: list[tuple[Segment, float]] = []
            asides: list[PromptAside] = []
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
                if not self._answer_now.is_set():
                    t0 = time.perf_counter()
                    asides.append(self._margin_prompt_aside(cache, seg, run, prefilled, keep_head=store is not None))
                    t_asides += time.perf_counter() - t0
                if store is not None and not prefilled and seg.index == n - 1:
                    store()
                run.read += 1
                group.append((seg, dt))
            if not group:
                return
            if self._answer_now.is_set():  # read but not annotated, as in the step-by-step loop
                for seg, dt in group:
                    yield self._segment_read(seg, dt)
                return

            t0 = time.perf_counter() - t_asides  # the margins' time includes their prompts computed aside
            assert len(asides) == len(group)  # a prompt is only skipped once answer_now is set (handled above)
            rows = [
                PackedRow(ends[seg.index], plan.margin_prompt_ids, a) for (seg, _), a in zip(group, asides, strict=True)
            ]
            deltas = [TextDeltas(b.decode) for _ in rows]
            logprobs: list[list[float]] = [[] for _ in rows]
            held: list[list[str]] = [[] for _ in rows]
            yield self._segment_read(*group[0])
            steps = b.generate_packed(cache, rows, cfg.margin_max_new_tokens, cfg.sampling, logprobs=logprobs)
            try:
                for step in steps:
                    self._check_cancel()
                    for i, tok in step:
                        if delta := deltas[i].push(tok):
                            if i == 0:
                                yield MarginToken(segment_index=group[0][0].index, text=delta)
                            else:
                                held[i].append(delta)
            finally:
                steps.close()
            for i, d in enumerate(deltas):  # text held back as a possibly partial character
                if delta := d.flush():
                    if i == 0:
                        yield MarginToken(segment_index=group[0][0].index, text=delta)
                    else:
                        held[i].append(delta)
            t_margin = time.perf_counter() - t0
            timings.margin_seconds += t_margin
            # Prompt tokens computed in this run: all of each margin prompt, but for heads reused from a document cache.
            tokens.prompt += sum(
                len(r.prompt_ids) - (len(a.prompt_ids) if a.last_logits is None else 0)
                for r, a in zip(rows, asides, strict=True)
            )
            tokens.margin_generated += sum(len(d.ids) for d in deltas)

            t0 = time.perf_counter()
            drafts = [self._draft(seg, d, lp) for (seg, _), d, lp in zip(group, deltas, logprobs, strict=True)]
            if cfg.classification == "segment_pmi":
                run.prompt_asides.update((ends[seg.index], a) for (seg, _), a in zip(group, asides, strict=True))
            judged = self._judge(drafts, run, cache)
            t_classify = time.perf_counter() - t0
            timings.classify_seconds += t_classify
            share = (t_margin + t_classify) / len(rows)  # one batch: each margin gets an equal share of its time
            for i, ((seg, dt), judgement) in enumerate(zip(group, judged, strict=True)):
                if i > 0:
                    yield self._segment_read(seg, dt)
                    for delta in held[i]:
                        yield MarginToken(segment_index=seg.index, text=delta)
                margin = self._margin(seg, judgement, len(deltas[i].ids), share)
                run.margins.append(margin)
                yield MarginWritten(segment_index=seg.index, n_segments=n, margin=margin)

    def _store_document(self, doc_cache: DocumentCache, key: str, cache: Any, run: _RunState) -> None:
        """Keep the context as read (a fork: no copy), with the margin heads computed so far, for later questions."""
        b, heads = self.wim.backend, dict(run.margin_heads)
        nbytes = b.cache_nbytes(cache) + sum(b.aside_nbytes(h) for h in heads.values())
        doc_cache.put(key, PrefilledDocument(b.fork_cache(cache), tuple(self.plan.margin_head_ids), heads), nbytes)

    def _margin_prompt_aside(
        self, cache: Any, seg: Segment, run: _RunState, prefilled: bool, *, keep_head: bool
    ) -> PromptAside:
        """A segment's margin prompt, computed now on a cache that ends at the segment: plain causal attention over
        exactly its prefix, rather than a masked pass over the whole document with the other rows later.

        Reading, the cache does end there: the whole prompt is computed, and with `keep_head` (a document cache will
        store this read) its question-independent head is kept. From a reused document the stored head is enough
        (the rest is computed in the packed pass); without one, the document is cut at the segment in a fork (a copy
        of that prefix, dropped after)."""
        plan, b = self.plan, self.wim.backend
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
        )

    def _margin_classifier(self, cfg: WiMConfig) -> MarginClassifier:
        """The run's model judge: the auxiliary model for 'auxiliary', else WiM's own model."""
        if cfg.classification == "auxiliary":
            backend, frame = self.wim.classifier, self.wim._classifier_frame
        else:
            backend, frame = self.wim.backend, self.wim.frame
        assert backend is not None and frame is not None
        template = self.wim.prompts.classification
        return MarginClassifier(backend, frame, template, self.plan.question, cfg.classifier_max_new_tokens)

    def _judge(self, drafts: list[MarginDraft], run: _RunState, cache: Any) -> list[_Judgement]:
        """Verdict (and score) per margin; a group is judged in one pass. `cache` holds the text read so far."""
        cfg = self.plan.config
        mode = cfg.classification
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
        return [_Judgement(d.text, verdict, reply) for d, (verdict, reply) in zip(drafts, replies, strict=True)]

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
