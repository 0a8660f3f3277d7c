"""Incremental detokenization: turn a growing list of token ids into text deltas."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextDeltas:
    """Emits only text that can no longer change: a trailing U+FFFD (half a UTF-8 character) is held back."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

    def flush(self) -> str:
        """The text held back so far (call once generation has ended)."""
        text = self._decode(self.ids)
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

    @property
    def text(self) -> str:
        return self._decode(self.ids)
