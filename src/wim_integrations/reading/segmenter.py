"""Split a context into segments of at most N model tokens, cut where a reader would pause.

The whole context is tokenized once; segments are slices of that one token sequence, so the segments' tokens
concatenated are exactly the tokens of the whole context, and their texts concatenated are exactly the input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import WiMInputError
from ..inputs import InputDocument, as_documents
from ..results import DocumentSpan

DOCUMENT_SEPARATOR = "\n\n"

# Cut strength before a token, strongest first. A token that starts inside a matched gap may open a segment.
_DOC, _PARAGRAPH, _LINE, _SENTENCE, _WORD, _TOKEN, _MID_CHAR = 6, 5, 4, 3, 2, 1, 0
_GAPS: tuple[tuple[int, re.Pattern[str]], ...] = (
    (_PARAGRAPH, re.compile(r"\n[ \t]*\n\s*")),
    (_LINE, re.compile(r"\n\s*")),
    (_SENTENCE, re.compile(r"(?<=[.!?…。])[\"'”’)\]]*\s+")),
    (_WORD, re.compile(r"\s+")),
)


@dataclass(frozen=True)
class Segment:
    index: int
    text: str
    start_char: int
    end_char: int
    start_token: int
    end_token: int
    token_ids: tuple[int, ...]
    documents: tuple[DocumentSpan, ...] = ()

    @property
    def n_tokens(self) -> int:
        return self.end_token - self.start_token


@dataclass(frozen=True)
class Context:
    """A context ready for WiM: its text, its documents, and its tokens cut into segments."""

    text: str
    documents: tuple[InputDocument, ...]
    doc_starts: tuple[int, ...]
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def join_documents(docs: Sequence[InputDocument]) -> tuple[str, tuple[int, ...]]:
    starts, pos = [], 0
    for i, doc in enumerate(docs):
        if i:
            pos += len(DOCUMENT_SEPARATOR)
        starts.append(pos)
        pos += len(doc.text)
    return DOCUMENT_SEPARATOR.join(d.text for d in docs), tuple(starts)


def _cut_strengths(text: str, starts: Sequence[int], doc_starts: Sequence[int]) -> list[int]:
    """Strength of a cut just before each token (index 0 unused)."""
    level = bytearray(len(text) + 1)
    for strength, pattern in reversed(_GAPS):  # weakest first so stronger gaps overwrite
        for m in pattern.finditer(text):
            level[m.start() : m.end() + 1] = bytes([strength]) * (m.end() + 1 - m.start())
    for d in doc_starts[1:]:
        a = d - len(DOCUMENT_SEPARATOR)
        level[a : d + 1] = bytes([_DOC]) * (d + 1 - a)
    out = [_TOKEN] * len(starts)
    for i in range(1, len(starts)):
        if starts[i] <= starts[i - 1]:
            out[i] = _MID_CHAR  # a byte-level token inside one character
        else:
            out[i] = max(_TOKEN, level[starts[i]])
    return out


def _choose_cuts(strengths: Sequence[int], budget: int) -> list[int]:
    """Token indices where segments start.

    Take the strongest cut in the last half of the window; a short segment ending at a sentence beats a cut
    inside a sentence, and only a sentence longer than the budget is split between words (or tokens).
    """
    n, cuts, s = len(strengths), [0], 0
    while n - s > budget:
        hi, half = s + budget, s + max(1, budget // 2)
        passes = [(half, level) for level in (_DOC, _PARAGRAPH, _LINE, _SENTENCE)]
        passes += [(s + 1, _SENTENCE), (half, _WORD), (s + 1, _WORD), (s + 1, _TOKEN), (s + 1, _MID_CHAR)]
        for lo, need in passes:
            best = next((i for i in range(hi, lo - 1, -1) if strengths[i] >= need), None)
            if best is not None:
                break
        s = best if best is not None else hi
        cuts.append(s)
    return cuts


class OffsetEncoder(Protocol):
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of user text and the character offset where each token starts."""


def _document_token_starts(starts: Sequence[int], doc_starts: Sequence[int]) -> list[int]:
    """Index of the token where each document after the first begins: the first token starting at or after the
    document's first character, or the token straddling it (a token may join the separator to the text)."""
    out, i = [], 0
    for d in doc_starts[1:]:
        while i < len(starts) and starts[i] < d:
            i += 1
        out.append(i if i == len(starts) or starts[i] == d else max(i - 1, 0))
    return out


def _choose_cuts_per_document(
    strengths: Sequence[int], starts: Sequence[int], doc_starts: Sequence[int], doc_ends: Sequence[int], budget: int
) -> list[int]:
    """Cuts with every document starting a segment of its own (a long document is still cut within).

    The separator after a document stays in its last segment when it fits there; otherwise it opens the next
    document's first segment, so no segment holds only a separator (given a budget of at least the separator plus one
    character's tokens: a few, far below the margin prompt the planner requires)."""
    n = len(strengths)
    firsts = [*_document_token_starts(starts, doc_starts), n]
    cuts: list[int] = []
    lo = 0  # where the current document's range starts (its first token, or a separator carried before it)
    for d, end in enumerate(firsts):
        first = firsts[d - 1] if d else 0
        if end <= lo:  # an empty document: nothing of its own to cut
            continue
        # Never cut between a carried separator and the document it precedes.
        sub = [_MID_CHAR if 0 < i <= first - lo else level for i, level in enumerate(strengths[lo:end])]
        content_end = next((t for t in range(max(first, lo), end) if starts[t] >= doc_ends[d]), end)
        if content_end <= lo:
            content_end = end
        local = [lo + c for c in _choose_cuts(sub[: content_end - lo], budget)]
        cuts += local
        lo = end if end - local[-1] <= budget else content_end
    return cuts or [0]


def segment_context(encoder: OffsetEncoder, context: object, budget: int, *, merge_documents: bool = True) -> Context:
    """Tokenize `context` once (with the backend's `encode_with_offsets`) and cut it into segments of at most
    `budget` tokens. With `merge_documents=False` every document starts a segment (short ones are not joined), so
    each margin is about one document."""
    docs = as_documents(context)
    text, doc_starts = join_documents(docs)
    if not text.strip():
        raise WiMInputError("context is empty or whitespace only; pass the text WiM should read.")
    ids, starts = encoder.encode_with_offsets(text)
    strengths = _cut_strengths(text, starts, doc_starts)
    if merge_documents:
        cuts = _choose_cuts(strengths, budget)
    else:
        doc_ends = [start + len(doc.text) for doc, start in zip(docs, doc_starts, strict=True)]
        cuts = _choose_cuts_per_document(strengths, starts, doc_starts, doc_ends, budget)
    bounds = [*cuts, len(ids)]
    # Character cut = start of the segment's first token (made monotonic); the first segment starts at 0 and
    # the last ends at len(text), so the segment texts tile the input exactly, whitespace included.
    char_cuts = [0]
    for c in cuts[1:]:
        char_cuts.append(max(char_cuts[-1], starts[c]))
    char_cuts.append(len(text))
    segments = []
    for k in range(len(cuts)):
        a, b = char_cuts[k], char_cuts[k + 1]
        segments.append(
            Segment(
                index=k,
                text=text[a:b],
                start_char=a,
                end_char=b,
                start_token=bounds[k],
                end_token=bounds[k + 1],
                token_ids=tuple(ids[bounds[k] : bounds[k + 1]]),
                documents=_document_spans(docs, doc_starts, a, b),
            )
        )
    return Context(text, docs, doc_starts, tuple(ids), tuple(segments))


def _document_spans(
    docs: Sequence[InputDocument], doc_starts: Sequence[int], a: int, b: int
) -> tuple[DocumentSpan, ...]:
    spans = []
    for i, (doc, start) in enumerate(zip(docs, doc_starts, strict=True)):
        lo, hi = max(a, start), min(b, start + len(doc.text))
        if lo < hi or (not doc.text and a <= start < b):
            spans.append(
                DocumentSpan(
                    doc_index=i,
                    doc_id=doc.id,
                    start_char=lo - start,
                    end_char=hi - start,
                    metadata=dict(doc.metadata),
                )
            )
    return tuple(spans)
