"""Incremental detokenization: turn a growing list of token ids into text deltas."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .errors import WiMInputError


class _Decoding(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...

    def stream_decoder(self) -> Callable[[int], str | None] | None: ...


class TextDeltas:
    """Emits only text that can no longer change: half a UTF-8 character (a trailing U+FFFD) is held back.

    `decode` turns a whole id list into text. With a `stream_decoder` step (a backend's `stream_decoder()`, e.g. the
    tokenizers library's incremental `DecodeStream` on a fast tokenizer) each token is decoded on its own, looking at
    only the last few tokens: the same text (tests/core/test_textstream.py) without re-decoding the whole list per
    token. `decode` of the whole list is then used only by `flush` after held-back tokens.
    """

    def __init__(
        self, decode: Callable[[Sequence[int]], str], stream_decoder: Callable[[int], str | None] | None = None
    ) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._text = ""  # everything emitted so far
        self._held = False  # tokens pushed since the last emitted text
        self._step = stream_decoder

    @classmethod
    def for_backend(cls, backend: _Decoding) -> TextDeltas:
        """Deltas with the backend's `decode` and, where it offers one, its incremental decoder."""
        return cls(backend.decode, backend.stream_decoder())

    def push(self, token: int) -> str:
        self.ids.append(token)
        if self._step is not None:
            try:
                delta = self._step(token)
            except Exception:  # DecodeStream gave up on this decoder (e.g. its prefix changed): decode whole lists
                self._step = None
            else:
                self._held = delta is None
                self._text += delta or ""
                return delta or ""
        text = self._decode(self.ids)
        if text.endswith("\ufffd"):
            self._held = True
            return ""
        delta, self._text, self._held = text[len(self._text) :], text, False
        return delta

    def flush(self) -> str:
        """The text held back so far (call once generation has ended)."""
        if not self._held:
            return ""
        text = self._decode(self.ids)
        delta, self._text, self._held = text[len(self._text) :], text, False
        return delta

    @property
    def text(self) -> str:
        return self._decode(self.ids) if self._held else self._text


def stop_list(stop: object) -> list[str]:
    """A caller's `stop` (None, a string, or a list of strings) as a list; `WiMInputError` for anything else."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, Sequence) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise WiMInputError(f"stop must be a string or a list of strings, not {stop!r}.")


class StopCut:
    """Streams text up to the first stop sequence, holding back a tail that could still start one.

    `lstrip`: the text starts at its first visible character (as `WiMResult.answer` does)."""

    def __init__(self, stops: Sequence[str], *, lstrip: bool = True) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.started = not lstrip
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        self.pending += text
        hits = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        keep = max((len(s) - 1 for s in self.stops), default=0)
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut] if cut > 0 else "", self.pending[max(cut, 0) :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
