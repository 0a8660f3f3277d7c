"""Incremental detokenization: turn a growing list of token ids into text deltas."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol


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
