"""Judging margins with a model (`same_model` or `auxiliary`): the question's prompt prefilled once per run.

The classification prompt is the same up to the margin for every segment, so its head (chat prefix, instruction,
question) is prefilled once into a classifier cache; each margin then costs only its own tail (margin text, closing
instruction, chat suffix). One margin is generated on top of that cache and rolled back; a group goes through one
packed pass whose rows all see the shared head. A reply stops as soon as its verdict is settled ("NO," cannot become
anything else), so a chatty classifier does not decode its explanation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .backends.base import Backend, GenerationRequest, PackedRequest, PackedRow, packed_view
from .events import Verdict
from .prompts import ChatFrame, render, split_at_placeholder
from .relevance import CONTENT_FREE_MARGIN, logsumexp
from .verdicts import parse_verdict, verdict_is_settled

_YES_WORDS = ("YES", "Yes", "yes", " YES", " Yes", " yes")
_NO_WORDS = ("NO", "No", "no", " NO", " No", " no")


class MarginClassifier:
    """Classifies the margins of one run. Not thread-safe: each run owns one (its cache is per run)."""

    def __init__(self, backend: Backend, frame: ChatFrame, template: str, question: str, max_new_tokens: int) -> None:
        self.backend = backend
        self.question = question
        self.max_new_tokens = max_new_tokens
        head, self._tail_template = split_at_placeholder(template, "margin")
        self.head_ids = backend.encode_template(frame.prefix) + backend.encode_text(render(head, question=question))
        self._suffix_ids = backend.encode_template(frame.suffix)
        self._cache: Any = None
        self.generated_tokens = 0

    def prompt_ids(self, margin: str) -> list[int]:
        """The whole classification prompt of `margin`, as the model sees it (shared head + own tail)."""
        return self.head_ids + self._tail_ids(margin)

    def _tail_ids(self, margin: str) -> list[int]:
        tail = render(self._tail_template, question=self.question, margin=margin)
        return self.backend.encode_text(tail) + self._suffix_ids

    def _head_cache(self) -> Any:
        if self._cache is None:
            self._cache = self.backend.new_cache()
            self.backend.prefill(self._cache, self.head_ids)
        return self._cache

    def classify(self, margins: Sequence[str], check: Callable[[], None]) -> list[tuple[Verdict, str]]:
        """(verdict, reply) per margin; `check` runs between decoding steps (cancellation)."""
        if not margins:
            return []
        b = self.backend
        cache = self._head_cache()
        packed = packed_view(b)
        if len(margins) > 1 and packed is not None:
            rows = [PackedRow(len(self.head_ids), self._tail_ids(m)) for m in margins]
            outs: list[list[int]] = [[] for _ in rows]

            def settled(row: int, tokens: list[int]) -> bool:
                return verdict_is_settled(b.decode(tokens))

            steps = packed.generate_packed(cache, PackedRequest(rows, self.max_new_tokens, done=settled))
            try:
                for step in steps:
                    check()
                    for i, tok in step:
                        outs[i].append(tok)
            finally:
                steps.close()
        else:
            outs = [self._generate_one(cache, m, check) for m in margins]
        self.generated_tokens += sum(len(o) for o in outs)
        replies = [b.decode(o).strip() for o in outs]
        return [(parse_verdict(r), r) for r in replies]

    def calibrated_scores(self, margins: Sequence[str]) -> list[float]:
        """log P(yes) - log P(no) of each margin's first reply token, minus the same for a content-free margin.

        No reply is decoded: one pass reads every margin's tail (and the content-free one's) on top of the shared
        head and looks at the next-token distribution. Yes/no are each the sum over their spellings' first tokens."""
        if not margins:
            return []
        yes, no = self._verdict_tokens()
        rows = [self._tail_ids(m) for m in [*margins, CONTENT_FREE_MARGIN]]
        scores = self.backend.score_rows(self._head_cache(), rows, next_ids=[*yes, *no])

        def log_odds(next_lp: dict[int, float]) -> float:
            return logsumexp([next_lp[t] for t in yes]) - logsumexp([next_lp[t] for t in no])

        *per_margin, baseline = (log_odds(s.next_logprobs) for s in scores)
        return [v - baseline for v in per_margin]

    def _verdict_tokens(self) -> tuple[list[int], list[int]]:
        """First tokens of the yes and no spellings; a token that opens both is left out."""
        first = self.backend.encode_text
        yes = {first(w)[0] for w in _YES_WORDS}
        no = {first(w)[0] for w in _NO_WORDS}
        return sorted(yes - no), sorted(no - yes)

    def _generate_one(self, cache: Any, margin: str, check: Callable[[], None]) -> list[int]:
        b, out = self.backend, []
        request = GenerationRequest(self._tail_ids(margin), self.max_new_tokens)
        tokens = b.generate(cache, request)
        try:
            for tok in tokens:
                check()
                out.append(tok)
                if verdict_is_settled(b.decode(out)):
                    break
        finally:
            tokens.close()
            b.rollback(cache, len(self.head_ids))
        return out
