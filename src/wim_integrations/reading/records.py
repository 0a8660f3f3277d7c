"""The records a run emits: its events' payloads and its result, built from the plan and what the loop produced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..analysis import WiMSummary
from ..events import MarginWritten, SegmentRead
from ..results import ContextDocument, Margin, SegmentInfo, Timings, TokenCounts, WiMResult
from ..textstream import TextDeltas
from .judging import Judgement
from .plan import Plan
from .scoring import MarginDraft
from .segmenter import Context, Segment


@dataclass
class Written:
    """A margin as decoded, before it is judged."""

    segment: Segment
    deltas: TextDeltas
    logprobs: list[float]


def segment_read(plan: Plan, seg: Segment, seconds: float) -> SegmentRead:
    return SegmentRead(
        segment_index=seg.index,
        n_segments=plan.n_segments,
        char_span=(seg.start_char, seg.end_char),
        token_span=(seg.start_token, seg.end_token),
        n_tokens=seg.n_tokens,
        documents=list(seg.documents),
        seconds=seconds,
    )


def draft(plan: Plan, w: Written) -> MarginDraft:
    seg = w.segment
    start, end = plan.segment_start(seg.index), plan.segment_ends[seg.index]
    return MarginDraft(w.deltas.text.strip(), list(w.deltas.ids), w.logprobs, seg.text, start, end)


def margin(plan: Plan, w: Written, judged: Judgement, seconds: float) -> Margin:
    seg = w.segment
    return Margin(
        segment_index=seg.index,
        text=judged.text,
        relevant=judged.verdict in ("yes", "unclassified")
        or (judged.verdict == "unknown" and plan.config.keep_unknown_verdicts),
        verdict=judged.verdict,
        classifier_output=judged.reply,
        score=judged.score,
        score_terms=judged.score_terms,
        char_span=(seg.start_char, seg.end_char),
        token_span=(seg.start_token, seg.end_token),
        documents=list(seg.documents),
        n_tokens=len(w.deltas.ids),
        seconds=seconds,
        data=judged.data,
        parse_error=judged.parse_error,
    )


def margin_written(plan: Plan, seg: Segment, margin: Margin, judged: Judgement) -> MarginWritten:
    head = len(plan.head_ids) if seg.index == 0 else 0
    return MarginWritten(
        segment_index=seg.index,
        n_segments=plan.n_segments,
        margin=margin,
        prompt_tokens=head + seg.n_tokens + len(plan.margin_prompt_ids),
        judge_call=judged.call,
    )


def result(
    plan: Plan,
    answer: str,
    margins: list[Margin],
    read_seconds: dict[int, float],
    timings: Timings,
    tokens: TokenCounts,
    model: str,
) -> WiMResult:
    n_read = len(read_seconds)
    fields = dict(
        answer=answer,
        margins=margins,
        n_segments=plan.n_segments,
        segments_read=n_read,
        stopped_early=n_read < plan.n_segments,
        timings=timings,
        tokens=tokens,
        model=model,
        segments=_segment_records(plan.context.segments, read_seconds),
        documents=_document_records(plan.context),
        context_text=plan.context.text,
    )
    if plan.analysis is not None:
        task = plan.analysis
        return WiMSummary(question="", instruction=task.instruction, schema_name=task.schema_name, **fields)
    return WiMResult(question=plan.question, **fields)


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
