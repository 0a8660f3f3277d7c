"""The reading loop: one run of the WiM algorithm as small named steps.

    open the document        (a document-cache hit, or the context's opening prefilled)
    for each group of segments:
        read the group       (prefill each segment; where margins are decoded packed, compute its margin prompt)
        write its margins    (in place after the segment, or all the group's rows in one packed decode)
        judge them           (one pass for the group)
    answer                   (from the segments read and the kept margins)

Groups hold `margin_batch_size` segments on a backend that decodes packed rows, one elsewhere. On a cache hit the
document is already in the cache: segments are only "read" for their margins."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.base import (
    GenerationRequest,
    PackedRequest,
    PackedRow,
    PromptAside,
    RowDecoder,
    local_kv_view,
    overlap_view,
    packed_view,
)
from ..backends.span import SpanConstraint
from ..events import AnswerStarted, AnswerToken, Finished, MarginToken, WiMEvent
from ..results import Margin, Timings, TokenCounts, WiMResult
from ..textstream import StopCut, TextDeltas
from . import records
from .document import CachedDocument
from .plan import Plan
from .reader import Reader
from .records import Written
from .segmenter import Segment
from .stopping import stop_rule
from .timing import lap

Events = Generator[WiMEvent, None, None]


@dataclass
class Controls:
    """The caller's hold on a run: `answer_now()` (stop reading, answer from what was read) and `cancel()`."""

    answer_now: Callable[[], bool]
    check: Callable[[], None]  # raises WiMCancelled once the run is cancelled
    cancelled: Callable[[], bool]


class Run:
    """The state of one run (its cache, counters and margins) and the steps that advance it."""

    def __init__(self, reader: Reader, plan: Plan, controls: Controls) -> None:
        self.reader, self.plan, self.cfg, self.controls = reader, plan, plan.config, controls
        self.backend = reader.backend
        self.packed = packed_view(self.backend)  # None: margins are decoded one at a time, in place
        self.kv = local_kv_view(self.backend)  # None: keys/values are not held in this process (a server)
        # Margins decoded in the batches that read the next segments (the paper's overlap); None: grouped decoding.
        self.overlap = overlap_view(self.backend) if self.cfg.overlap else None
        self.stop = stop_rule(self.cfg.margin_stop, self.backend.decode)  # None: margins end at the stop token
        self.judge = reader.judge_for(plan, controls.check)
        self.timings = Timings()
        self.tokens = TokenCounts(context=plan.context.n_tokens)
        self.margins: list[Margin] = []
        self.read_seconds: dict[int, float] = {}  # segment index -> prefill seconds, for the result's records
        self.prompt_cached = 0  # template / margin-head tokens taken from the document cache (not in tokens.prompt)
        self.margin_heads: dict[int, PromptAside] = {}  # segment end -> margin-head keys/values, for the doc cache
        self.group_seconds = 0.0  # the current group's margin time (prompts computed aside, decoding)
        self.document: CachedDocument | None = None
        self.spaceless_ids: dict[int, int | None] = {}  # quoted margins: a token -> its space-less form (see quote_of)
        if self.kv is not None and reader.document_cache is not None and self.cfg.reuse_document_cache:
            self.document = CachedDocument(self.kv, reader.document_cache, plan)
        self.result: WiMResult | None = None

    @property
    def n_read(self) -> int:
        return len(self.read_seconds)

    # -- the loop -------------------------------------------------------------------------------------------------
    def events(self) -> Events:
        started = time.perf_counter()
        try:
            cache, prefilled = self.open_document()
            for group in self.groups(prefilled):
                if self.overlap is not None and self.decodes_packed(prefilled) and not prefilled:
                    written = yield from self.read_overlapped(cache, group)
                else:
                    segments, asides = yield from self.read_group(cache, group, prefilled)
                    written = []
                    if segments:
                        written = yield from self.write_margins(cache, segments, asides, prefilled)
                if not written:
                    break
                yield from self.judge_margins(cache, written)
                if self.controls.answer_now():
                    break
            if self.document is not None:
                self.document.release()  # stored by now if it could be: nobody waits for this run's answer
            yield from self.answer(cache, started)
        finally:
            if self.document is not None:
                self.document.release()

    def groups(self, prefilled: bool) -> Iterator[list[Segment]]:
        size = self.cfg.margin_batch_size if self.decodes_packed(prefilled) else 1
        segments = self.plan.context.segments
        for g0 in range(0, len(segments), size):
            yield list(segments[g0 : g0 + size])

    def decodes_packed(self, prefilled: bool) -> bool:
        """Packed rows where the backend has them and a group holds several margins, or the document is already in
        the cache (a margin cannot be decoded in place there: the cache holds the segments after it)."""
        return self.packed is not None and (self.cfg.margin_batch_size > 1 or prefilled)

    # -- steps ----------------------------------------------------------------------------------------------------
    def open_document(self) -> tuple[Any, bool]:
        """The run's cache, and whether it already holds the whole document (a document-cache hit)."""
        plan, kv = self.plan, self.kv
        stored = self.document.open(self.controls.cancelled) if self.document is not None else None
        self.controls.check()
        if stored is not None and kv is not None:
            cache = kv.fork_cache(stored.cache)
            kv.reserve(cache, plan.peak_tokens)  # if this question outgrows the stored room, one copy, not several
            if stored.margin_head_ids == tuple(plan.margin_head_ids):
                self.margin_heads = dict(stored.margin_heads)
            self.timings.context_cache = "hit"
            self.prompt_cached += len(plan.head_ids)
            self.tokens.cache_read = self.tokens.context
            return cache, True
        cache = self.backend.new_cache()
        if kv is not None:  # one allocation for the whole run: no growth copying the cache (memory peak)
            kv.reserve(cache, plan.peak_tokens)
        with lap() as t:
            self.backend.prefill(cache, plan.head_ids)
        self.timings.prefill_seconds += t.seconds
        self.tokens.prompt += len(plan.head_ids)
        self.timings.context_cache = "miss" if self.document is not None else "off"
        return cache, False

    def read_group(
        self, cache: Any, group: list[Segment], prefilled: bool
    ) -> Generator[WiMEvent, None, tuple[list[Segment], list[PromptAside | None]]]:
        """Prefill the group's segments (unless prefilled), each announced as read. Where margins are decoded packed
        and keys/values live here, each margin prompt is computed as its segment is read (see `margin_prompt_at`).
        An `answer_now` stops the group: a segment read after it is not annotated."""
        read: list[Segment] = []
        asides: list[PromptAside | None] = []
        packed = self.decodes_packed(prefilled)
        self.group_seconds = 0.0
        for seg in group:
            if self.controls.answer_now():
                break
            self.controls.check()
            seconds = 0.0
            if not prefilled:
                with lap() as t:
                    self.backend.prefill(cache, seg.token_ids)
                seconds = t.seconds
                self.timings.prefill_seconds += seconds
            self.read_seconds[seg.index] = seconds
            yield records.segment_read(self.plan, seg, seconds)
            self.progress()
            if self.controls.answer_now():
                break
            if packed:
                with lap() as t:
                    asides.append(self.margin_prompt_at(cache, seg, prefilled) if self.kv is not None else None)
                self.add_margin_time(t.seconds)
                if self.document is not None and not prefilled and seg.index == self.plan.n_segments - 1:
                    self.document.store(cache, self.margin_heads)  # the whole document read: waiting runs go on
            read.append(seg)
        return read, asides

    def write_margins(
        self, cache: Any, segments: list[Segment], asides: list[PromptAside | None], prefilled: bool
    ) -> Generator[WiMEvent, None, list[Written]]:
        if self.decodes_packed(prefilled):
            return (yield from self.write_packed(cache, segments, asides))
        [seg] = segments
        written = yield from self.write_in_place(cache, seg)
        if self.document is not None and seg.index == self.plan.n_segments - 1:
            self.document.store(cache, self.margin_heads)  # the cache is back at the document's end
        return [written]

    def write_in_place(self, cache: Any, seg: Segment) -> Generator[WiMEvent, None, Written]:
        """Decode the margin on top of the cache, which ends at `seg`, token by token; then roll back."""
        plan, kv = self.plan, self.kv
        end = self.backend.cache_length(cache)
        deltas, logprobs = TextDeltas.for_backend(self.backend), list[float]()
        request = GenerationRequest(
            plan.margin_prompt_ids, self.cfg.margin_max_new_tokens, self.cfg.sampling, logprobs, self.quote_of(seg)
        )
        with lap() as t:
            try:
                tokens = self.backend.generate(cache, request)
                for tok in tokens:
                    self.controls.check()
                    self.progress()
                    if delta := deltas.push(tok):
                        yield MarginToken(segment_index=seg.index, text=delta)
                    if self.stop is not None and self.stop(deltas.ids):
                        tokens.close()  # complete: no further decoding step
                        break
                if delta := deltas.flush():
                    yield MarginToken(segment_index=seg.index, text=delta)
                if kv is not None:  # the prompt's keys/values are in the cache now: keep what is used later
                    if self.document is not None and plan.margin_head_length:
                        self.margin_heads[end] = kv.take_aside(cache, end, plan.margin_head_ids)
                    if self.judge.keeps_prompts:  # the next margin is scored without its segment from here
                        self.judge.keep_prompt(end, kv.take_aside(cache, end, plan.margin_prompt_ids[:-1]))
            finally:
                self.backend.rollback(cache, end)
        self.add_margin_time(t.seconds)
        self.tokens.prompt += len(plan.margin_prompt_ids)
        self.tokens.margin_generated += len(deltas.ids)
        return Written(seg, deltas, logprobs)

    def write_packed(
        self, cache: Any, segments: list[Segment], asides: list[PromptAside | None]
    ) -> Generator[WiMEvent, None, list[Written]]:
        """Decode the group's margins in one packed batch over the shared cache (row j sees the cache up to the end
        of segment j). Every margin streams live: its tokens interleave with the others', step by step. Where the
        backend keeps keys/values here the rows start from their prompts computed aside; elsewhere (a server) they
        carry their whole prompts."""
        packed, plan = self.packed, self.plan
        assert packed is not None
        rule = self.stop
        done = (lambda _, ids: rule(ids)) if rule is not None else None  # a row ends once its margin is complete
        ends = plan.segment_ends
        rows = [PackedRow(ends[s.index], plan.margin_prompt_ids, a) for s, a in zip(segments, asides, strict=True)]
        written = [Written(s, TextDeltas.for_backend(packed), []) for s in segments]
        spans = [self.quote_of(s) for s in segments] if self.cfg.margin_mode == "quote" else None
        server = self.kv is None

        def row_ended(i: int, ids: list[int]) -> None:  # on a server: its scoring request goes while others decode
            self.judge.prefetch(cache, plan.segment_start(segments[i].index), ids)

        request = PackedRequest(
            rows,
            self.cfg.margin_max_new_tokens,
            self.cfg.sampling,
            done,
            [w.logprobs for w in written],
            spans,
            overlap=server and bool(self.cfg.overlap),  # a server's overlap (in process: read_overlapped)
            row_ended=row_ended if server else None,
        )
        with lap() as t:
            steps = packed.generate_packed(cache, request)
            try:
                for step in steps:
                    self.controls.check()
                    self.progress()
                    yield from self.margin_tokens(written, step)
            finally:
                steps.close()
            yield from self.flush_margins(written)
        self.add_margin_time(t.seconds)
        self.count_rows(written, asides)
        return written

    def count_rows(self, written: list[Written], asides: Sequence[PromptAside | None]) -> None:
        """Token counts of a group's margin rows, and their prompts handed to the judge."""
        plan = self.plan
        # Prompt tokens computed in this run: all of each margin prompt, but for heads reused from a document cache.
        reused = sum(len(a.prompt_ids) for a in asides if a is not None and a.last_logits is None)
        self.tokens.prompt += len(plan.margin_prompt_ids) * len(written) - reused
        self.prompt_cached += reused
        self.tokens.margin_generated += sum(len(w.deltas.ids) for w in written)
        for w, aside in zip(written, asides, strict=True):
            if aside is not None and self.judge.keeps_prompts:
                self.judge.keep_prompt(plan.segment_ends[w.segment.index], aside)

    def read_overlapped(self, cache: Any, group: list[Segment]) -> Generator[WiMEvent, None, list[Written]]:
        """Read the group with its margins decoding alongside (the paper's overlap): each segment is prefilled in
        pieces, each piece one batch with the next token of every margin already started; a segment's margin row
        starts once it is read (its prompt computed there, as in `read_group`). After the group's last segment the
        rows finish on their own. Results are the grouped path's (greedy); a margin's tokens may stream before the
        next segment is announced as read."""
        assert self.overlap is not None
        plan, cfg = self.plan, self.cfg
        rule = self.stop
        done = (lambda _, ids: rule(ids)) if rule is not None else None
        rows = self.overlap.open_rows(cache, cfg.margin_max_new_tokens, cfg.sampling, done)
        written: list[Written] = []
        asides: list[PromptAside | None] = []
        self.group_seconds = 0.0
        try:
            for seg in group:
                if self.controls.answer_now():
                    break
                self.controls.check()
                seconds = 0.0
                ids, n = seg.token_ids, cfg.overlap_chunk_tokens
                for k in range(0, len(ids), n):
                    with lap() as t:
                        step = rows.step(ids[k : k + n])
                    seconds += t.seconds
                    yield from self.margin_tokens(written, step)
                    self.controls.check()
                    self.progress()
                self.timings.prefill_seconds += seconds
                self.read_seconds[seg.index] = seconds
                yield records.segment_read(plan, seg, seconds)
                self.progress()
                if self.controls.answer_now():
                    break
                with lap() as t:
                    aside = self.margin_prompt_at(cache, seg, False)
                    w = Written(seg, TextDeltas.for_backend(self.backend), [])
                    row = PackedRow(plan.segment_ends[seg.index], plan.margin_prompt_ids, aside)
                    rows.add(row, w.logprobs, self.quote_of(seg))
                self.add_margin_time(t.seconds)
                written.append(w)
                asides.append(aside)
                if self.document is not None and seg.index == plan.n_segments - 1:
                    self.document.store(cache, self.margin_heads)  # the whole document read: waiting runs go on
            with lap() as t:
                yield from self.finish_rows(rows, written)
            self.add_margin_time(t.seconds)
        finally:
            rows.close()
        yield from self.flush_margins(written)
        self.count_rows(written, asides)
        return written

    def finish_rows(self, rows: RowDecoder, written: list[Written]) -> Events:
        while rows.running:
            self.controls.check()
            self.progress()
            yield from self.margin_tokens(written, rows.step())

    def margin_tokens(self, written: list[Written], step: list[tuple[int, int]]) -> Events:
        """One decoding step of packed rows: each row's new text as a `MarginToken`."""
        for i, tok in step:
            if delta := written[i].deltas.push(tok):
                yield MarginToken(segment_index=written[i].segment.index, text=delta)

    def flush_margins(self, written: list[Written]) -> Events:
        """Text held back as a possibly partial character, once the rows have ended."""
        for w in written:
            if delta := w.deltas.flush():
                yield MarginToken(segment_index=w.segment.index, text=delta)

    def quote_of(self, seg: Segment) -> SpanConstraint | None:
        """With quoted margins, the constraint a margin is decoded under: a span of its own segment's tokens."""
        if self.cfg.margin_mode != "quote":
            return None
        starts: dict[int, list[int]] = {}
        if self.cfg.quote_loose_start:
            for t in set(seg.token_ids):
                if (a := self.spaceless(t)) is not None:
                    starts.setdefault(a, []).append(t)
        return SpanConstraint(seg.token_ids, self.cfg.quote_min_tokens, starts)

    def spaceless(self, token: int) -> int | None:
        """The token that is `token`'s text without its leading space (" The" -> "The"), where one token is."""
        if token not in self.spaceless_ids:
            b, found = self.backend, None
            text = b.decode([token])
            if len(text) > 1 and text[0] == " " and not text[1].isspace() and "\ufffd" not in text:
                ids = b.encode_text(text[1:])
                if len(ids) == 1 and ids[0] != token and b.decode(ids) == text[1:]:
                    found = ids[0]
            self.spaceless_ids[token] = found
        return self.spaceless_ids[token]

    def margin_prompt_at(self, cache: Any, seg: Segment, prefilled: bool) -> PromptAside:
        """A segment's margin prompt, computed now on a cache that ends at the segment: plain causal attention over
        exactly its prefix, rather than a masked pass over the whole document with the other rows later.

        Reading, the cache does end there: the whole prompt is computed, and where a document cache will store this
        read, its question-independent head is kept. From a stored document the stored head is enough (the rest is
        computed in the packed pass); without one, the document is cut at the segment in a fork (a copy of that
        prefix, dropped after)."""
        kv, plan = self.kv, self.plan
        assert kv is not None
        end = plan.segment_ends[seg.index]
        if not prefilled:
            aside = kv.prefill_aside(cache, plan.margin_prompt_ids)
            if self.document is not None and plan.margin_head_length:
                self.margin_heads[end] = kv.aside_head(aside, plan.margin_head_length)
            return aside
        if end in self.margin_heads:
            return self.margin_heads[end]
        at_segment_end = kv.fork_cache(cache)
        kv.rollback(at_segment_end, end)
        return kv.prefill_aside(at_segment_end, plan.margin_prompt_ids)

    def judge_margins(self, cache: Any, written: list[Written]) -> Events:
        """Judge the group in one pass; each margin's time is an equal share of the group's decoding and judging."""
        self.controls.check()
        drafts = [records.draft(self.plan, w) for w in written]
        before = self.judge.generated_tokens
        with lap() as t:
            judged = self.judge.judge(drafts, cache)
        self.timings.classify_seconds += t.seconds
        self.tokens.classifier_generated += self.judge.generated_tokens - before
        share = (self.group_seconds + t.seconds) / len(written)
        for w, judgement in zip(written, judged, strict=True):
            margin = records.margin(self.plan, w, judgement, share)
            self.margins.append(margin)
            yield records.margin_written(self.plan, w.segment, margin, judgement)

    def answer(self, cache: Any, started: float) -> Events:
        """Roll back to the segments read, then decode the answer from them and the kept margins."""
        plan, cfg, b = self.plan, self.cfg, self.backend
        n, read = plan.n_segments, self.n_read
        if read < n:  # a reused cache holds the whole document: answer from the segments actually read
            b.rollback(cache, plan.segment_start(read))
        self.controls.check()
        relevant = [m for m in self.margins if m.relevant]
        final_ids = self.reader.planner.final_prompt_ids(plan.analysis or plan.question, relevant, n)
        self.tokens.answer_prompt = len(final_ids)
        yield AnswerStarted(
            n_relevant_margins=len(relevant),
            segments_read=read,
            n_segments=n,
            prompt=b.decode(final_ids),
            prompt_tokens=len(final_ids),
        )
        deltas = TextDeltas.for_backend(b)
        cut = StopCut(cfg.answer_stop, lstrip=False) if cfg.answer_stop else None  # None: the whole budget
        streamed: list[str] = []
        with lap() as t:
            tokens = b.generate(cache, GenerationRequest(final_ids, cfg.answer_max_new_tokens, cfg.sampling))
            for tok in tokens:
                self.controls.check()
                delta = deltas.push(tok)
                if cut is not None:
                    delta = cut.push(delta)
                if delta:
                    streamed.append(delta)
                    yield AnswerToken(text=delta)
                if cut is not None and cut.stopped:
                    tokens.close()  # a stop sequence ended the answer: no further decoding step
                    break
            tail = deltas.flush()
            if cut is not None:
                tail = cut.push(tail) + cut.flush()
            if tail:
                streamed.append(tail)
                yield AnswerToken(text=tail)
        self.timings.answer_seconds = t.seconds
        self.tokens.answer_generated = len(deltas.ids)
        answer = (deltas.text if cut is None else "".join(streamed)).strip()
        self.timings.total_seconds = time.perf_counter() - started
        counts = self.tokens
        counts.cache_read += self.prompt_cached
        counts.input_total = counts.context + counts.prompt + self.prompt_cached + counts.answer_prompt
        self.result = records.result(
            plan, answer, self.margins, self.read_seconds, self.timings, counts, self.backend.name
        )
        yield Finished(result=self.result)

    def add_margin_time(self, seconds: float) -> None:
        self.timings.margin_seconds += seconds
        self.group_seconds += seconds

    def progress(self) -> None:
        """Tell runs waiting for this run's prefill of the document that it is still going."""
        if self.document is not None:
            self.document.progress()
