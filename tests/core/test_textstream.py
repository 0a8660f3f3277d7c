"""TextDeltas on the tokenizers library's incremental decoder gives the text the whole-list decoding gave."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wim_integrations.textstream import TextDeltas


class WholeListDeltas:
    """The previous TextDeltas, kept as the reference: re-decodes the whole list on every token."""

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
        text = self._decode(self.ids)
        delta, self._emitted = text[self._emitted :], len(text)
        return delta


def _run(deltas, ids: list[int]) -> tuple[list[str], str, str]:
    pushed = [deltas.push(t) for t in ids]
    return pushed, deltas.flush(), getattr(deltas, "text", None) or ""


def _check_same(backend, ids: list[int]) -> None:
    new = TextDeltas.for_backend(backend)
    assert new._step is not None  # the incremental decoder is in use
    ref = WholeListDeltas(backend.decode)
    pushed, flushed, text = _run(new, ids)
    ref_pushed, ref_flushed, _ = _run(ref, ids)
    assert (pushed, flushed) == (ref_pushed, ref_flushed)  # token for token, what was emitted and when
    assert "".join(pushed) + flushed == text == backend.decode(ids)


@pytest.mark.parametrize(
    "text",
    ["Café, naïve, 東京, emoji 🙂 — unicode", "🙂🙂 東京東京", "The secret code is 4417.", "<|im_end|> special"],
)
def test_same_text_on_real_text_with_split_characters(tiny_backend, text):
    ids = tiny_backend.encode_text(text)
    _check_same(tiny_backend, ids)
    # Generation stops anywhere, also inside a character: the held bytes come out on flush, as before.
    for cut in range(1, len(ids)):
        _check_same(tiny_backend, ids[:cut])


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_same_text_on_any_token_sequence(tiny_backends, data):
    """Random ids over the whole vocabulary: byte tokens that make invalid UTF-8, special tokens, anything."""
    backend = tiny_backends["llama"]
    vocab = backend.tokens.vocab_size
    ids = data.draw(st.lists(st.integers(0, vocab - 1), max_size=40))
    _check_same(backend, ids)


def test_partial_character_is_held_then_completed(tiny_backends):
    backend = tiny_backends["llama"]
    ids = backend.encode_text("🙂")
    assert len(ids) > 1  # the emoji is several byte tokens in this vocabulary
    deltas = TextDeltas.for_backend(backend)
    assert [deltas.push(t) for t in ids[:-1]] == [""] * (len(ids) - 1)  # nothing printable yet
    assert deltas.push(ids[-1]) == "🙂" and deltas.flush() == ""


def test_falls_back_to_whole_list_decoding_without_a_stream_decoder():
    table = {1: "a", 2: "b"}
    deltas = TextDeltas(lambda ids: "".join(table[i] for i in ids))
    assert deltas._step is None
    assert [deltas.push(1), deltas.push(2)] == ["a", "b"] and deltas.text == "ab"


@pytest.mark.slow
def test_same_text_on_the_embedded_tokenizer(default_wim):
    backend = default_wim.backend
    ids = backend.encode_text("Café, naïve, 東京, emoji 🙂 — the keeper, Ines Marlowe, took the post in May. ")
    for cut in range(1, len(ids) + 1):
        _check_same(backend, ids[:cut])
    vocab = backend.tokens.vocab_size
    import random

    rng = random.Random(0)
    for _ in range(200):
        _check_same(backend, [rng.randrange(vocab) for _ in range(30)])
