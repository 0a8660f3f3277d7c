"""Incremental detokenization: turn a growing list of token ids into text deltas."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextDeltas:
    """Emits only text that can no longer change: half a UTF-8 character (a trailing U+FFFD) is held back.

    `decode` turns a whole id list into text. When it is a backend's bound `decode` and that backend offers
    `stream_decoder()` (HFBackend on a fast tokenizer), each token goes through the tokenizers library's incremental
    `DecodeStream` instead, which decodes only the last few tokens: the same text (tests/core/test_textstream.py)
    without re-decoding the whole list per token. `decode` of the whole list is then used only by `flush` after
    held-back tokens.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._text = ""  # everything emitted so far
        self._held = False  # tokens pushed since the last emitted text
        make = getattr(getattr(decode, "__self__", None), "stream_decoder", None)
        self._step: Callable[[int], str | None] | None = make() if callable(make) else None

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
