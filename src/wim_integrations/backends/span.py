"""Quoted margins: decoding constrained to copy one contiguous span of a source's tokens (pure Python, no torch).

`SpanConstraint(source, min_tokens)` describes the rule for one margin (its segment's token ids); `start()` gives the
matcher one decoding uses. The matcher keeps the set of positions where the quote written so far ends in the source
(every occurrence at once, so repeated substrings are followed together), and narrows it with each token: a step costs
the number of occurrences still alive, never a rescan of the source.

At each step the allowed next tokens are the source tokens right after some occurrence of the quote so far (the first
token: any token of the source, or one of `starts`: another id standing for a source token, such as "The" for the
" The" a sentence inside the text is made of, so the quote may begin as a reply begins). A stop token may end the
quote once it holds `min_tokens` tokens, and must end it where no occurrence can be continued (the quote reached the
source's end). Backends mask the logits to
`allowed_ids(stop_ids)` before greedy or sampled picking and `push` the token picked; the margin budget ends a quote
as it ends any margin. Every backend that decodes in process uses this one class (docs/architecture.md, "Quoted
margins")."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class SpanConstraint:
    """A quote of `source`: any contiguous run of its tokens, ended by a stop token after `min_tokens` tokens.

    `starts` maps a token id to the source tokens it may stand for as the quote's first token only (the space-less
    form of a token that starts with a space: the quote's text is then the span's text without that space)."""

    __slots__ = ("_index", "min_tokens", "source", "starts")

    def __init__(
        self, source: Sequence[int], min_tokens: int = 1, starts: Mapping[int, Sequence[int]] | None = None
    ) -> None:
        if min_tokens < 1:
            raise ValueError(f"min_tokens must be at least 1, not {min_tokens}")
        self.source: tuple[int, ...] = tuple(int(t) for t in source)
        self.min_tokens = min_tokens
        index: dict[int, list[int]] = {}
        for j, t in enumerate(self.source):
            index.setdefault(t, []).append(j)
        self._index = index  # token -> the positions where it occurs, ascending
        # Only stand-ins for tokens the source holds; a stand-in for a token of its own is that token.
        self.starts: dict[int, tuple[int, ...]] = {
            int(a): tuple(sorted({int(t) for t in ts if t in index}))
            for a, ts in (starts or {}).items()
            if any(t in index for t in ts)
        }

    def first_positions(self, token: int) -> list[int]:
        """Where a quote starting with `token` may start in the source (ascending; empty: it may not start so)."""
        found = set(self._index.get(token, ()))
        for t in self.starts.get(token, ()):
            found.update(self._index[t])
        return sorted(found)

    def accepts(self, quote: Sequence[int]) -> bool:
        """Whether `quote` is a quote under this constraint: a contiguous run of the source's tokens, its first token
        possibly a stand-in (`starts`)."""
        if not quote:
            return True
        n, rest = len(self.source), list(quote[1:])
        return any(
            list(self.source[j + 1 : j + 1 + len(rest)]) == rest and j + len(quote) <= n
            for j in self.first_positions(int(quote[0]))
        )

    def start(self) -> SpanMatcher:
        """A matcher for one decoding, before its first token."""
        return SpanMatcher(self)

    def __repr__(self) -> str:
        return (
            f"SpanConstraint({len(self.source)} source tokens, min_tokens={self.min_tokens}, {len(self.starts)} starts)"
        )


class SpanMatcher:
    """The state of one quote being decoded: its length and the source positions right after each occurrence."""

    __slots__ = ("_ends", "constraint", "length")

    def __init__(self, constraint: SpanConstraint) -> None:
        self.constraint = constraint
        self.length = 0
        self._ends: list[int] | None = None  # None: nothing written yet, every source position may start the quote

    def continuations(self) -> list[int]:
        """The token ids that continue some occurrence of the quote so far (ascending, no repeats)."""
        src = self.constraint.source
        if self._ends is None:
            return sorted({*self.constraint._index, *self.constraint.starts})
        return sorted({src[j] for j in self._ends if j < len(src)})

    @property
    def may_stop(self) -> bool:
        """Whether a stop token may end the quote now (long enough, or no way to go on)."""
        return self.length >= self.constraint.min_tokens or self.must_stop

    @property
    def must_stop(self) -> bool:
        """Whether no source token continues the quote (it ends where the source ends, or the source is empty)."""
        if self._ends is None:
            return not self.constraint.source
        n = len(self.constraint.source)
        return all(j >= n for j in self._ends)

    def allowed_ids(self, stop_ids: Iterable[int]) -> list[int] | None:
        """The ids a backend lets through its mask at this step: the continuations, and `stop_ids` where the quote may
        end. None where the quote must end now (the backend stops the row as if a stop token were picked)."""
        if self.must_stop:
            return None
        ids = self.continuations()
        if self.may_stop:
            ids = sorted({*ids, *stop_ids})
        return ids

    def push(self, token: int) -> None:
        """Extend the quote by `token` (one of `continuations()`); ValueError otherwise."""
        src = self.constraint.source
        if self._ends is None:
            ends = [j + 1 for j in self.constraint.first_positions(token)]
        else:
            ends = [j + 1 for j in self._ends if j < len(src) and src[j] == token]
        if not ends:
            raise ValueError(f"token {token} does not continue the quote (it is not in the source after it)")
        self._ends = ends
        self.length += 1

    @property
    def occurrences(self) -> list[tuple[int, int]]:
        """(start, end) of every occurrence of the quote so far in the source (empty before the first token)."""
        return [(j - self.length, j) for j in self._ends or ()]


def is_span(quote: Sequence[int], source: Sequence[int]) -> bool:
    """Whether `quote` is a contiguous run of `source` (the empty quote is)."""
    q, s = list(quote), list(source)
    return not q or any(s[i : i + len(q)] == q for i in range(len(s) - len(q) + 1))
