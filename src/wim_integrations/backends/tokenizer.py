"""Everything WiM needs from a tokenizer, behind one lock: the engine, segmenter and prompts ask the backend, and the
backend asks this. Both the in-process backend and the server backend hold one (the server backend on a local copy
of the served model's tokenizer), so nothing outside `backends/` calls a Hugging Face tokenizer."""

from __future__ import annotations

import contextlib
import json
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..errors import WiMInputError
from ..prompts import ChatFrame


class HFTokenizer:
    """A Hugging Face fast tokenizer, thread-safe.

    A fast tokenizer call sets flags on the shared Rust tokenizer (encode_special_tokens, truncation) before encoding,
    so concurrent calls could encode with each other's flags: every call holds `lock`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.lock = threading.RLock()
        self._frame: ChatFrame | None = None

    @property
    def name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__)

    @property
    def eos_ids(self) -> set[int]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return set() if eos is None else {int(eos)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode_text(self, text: str) -> list[int]:
        """Tokens of user text (special-token strings inside it stay plain text)."""
        with self.lock:
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def encode_template(self, text: str) -> list[int]:
        """Tokens of template text (special-token strings become special tokens)."""
        with self.lock:
            # Explicit False: the flag left by a previous encode_text call must not leak into this one.
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Tokens of user text and the character offset where each starts (the segmenter cuts on these)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise WiMInputError(
                f"{type(self.tokenizer).__name__} is a slow tokenizer; WiM needs a fast tokenizer (character "
                "offsets). Load the model's tokenizer with use_fast=True."
            )
        with self.lock:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True)
        return list(enc["input_ids"]), [a for a, _ in enc["offset_mapping"]]

    def decode(self, ids: Sequence[int]) -> str:
        with self.lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def chat_frame(self, *, allow_plain: bool = True) -> ChatFrame:
        """The chat template around one user message (computed once)."""
        if self._frame is None:
            with self.lock:
                self._frame = ChatFrame.from_tokenizer(self.tokenizer, allow_plain=allow_plain)
        return self._frame

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """A whole conversation in the chat template, ending where the assistant's reply starts."""
        with self.lock:
            if getattr(self.tokenizer, "chat_template", None):
                return str(
                    self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
                )
        frame = self.chat_frame()  # the plain format: one user turn with the messages as text
        return frame.prefix + "\n\n".join(m["content"] for m in messages) + frame.suffix

    def min_tokens(self, n_bytes: int) -> int | None:
        """A lower bound on the tokens of any text of `n_bytes` UTF-8 bytes, without tokenizing it: no token covers more
        bytes than the longest vocabulary entry (its string's UTF-8 length, an over-estimate for byte-level and
        byte-fallback vocabularies), and Unicode normalization shrinks text by at most `_NORMALIZATION_SHRINK`. None
        when no bound is known: another normalizer may delete characters."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            per_token = _LONGEST[backend]
        except (KeyError, TypeError):
            with self.lock:
                per_token = _bytes_per_token(backend)
            with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time (tens of ms)
                _LONGEST[backend] = per_token
        return -(-n_bytes // per_token) if per_token else None

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        """A step of the tokenizers library's incremental decoder (`DecodeStream`): the text `decode` would add for
        one more token, None while a character is incomplete. None where `decode` is more than the Rust tokenizer's
        decoding (a tokenizer without a Rust backend, a custom `_decode`, or transformers' space clean-up)."""
        try:
            from tokenizers.decoders import DecodeStream
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:
            return None
        tok = self.tokenizer
        rust = getattr(tok, "backend_tokenizer", None)
        if rust is None or getattr(type(tok), "_decode", None) is not TokenizersBackend._decode:
            return None
        if tok.clean_up_tokenization_spaces and (
            type(rust.model).__name__ != "BPE"  # transformers skips the clean-up for BPE unless forced
            or getattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        ):
            return None
        stream = DecodeStream(skip_special_tokens=True)

        def step(token: int) -> str | None:
            with self.lock:
                return stream.step(rust, token)

        return step


class Tokens(Protocol):
    """What a backend's tokenizer provides (`HFTokenizer`, `GGUFTokenizer`)."""

    def encode_text(self, text: str) -> list[int]: ...
    def encode_template(self, text: str) -> list[int]: ...
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def chat_frame(self) -> ChatFrame: ...
    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str: ...
    def min_tokens(self, n_bytes: int) -> int | None: ...
    def stream_decoder(self) -> Callable[[int], str | None] | None: ...


class TokenizerMethods:
    """The tokenizer-facing half of the backend protocol, delegated to `self.tokens`."""

    tokens: Tokens

    def encode_text(self, text: str) -> list[int]:
        return self.tokens.encode_text(text)

    def encode_template(self, text: str) -> list[int]:
        return self.tokens.encode_template(text)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        return self.tokens.encode_with_offsets(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokens.decode(ids)

    def chat_frame(self) -> ChatFrame:
        return self.tokens.chat_frame()

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        return self.tokens.render_chat(messages)

    def min_tokens(self, n_bytes: int) -> int | None:
        return self.tokens.min_tokens(n_bytes)

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        return self.tokens.stream_decoder()


# Composition shrinks UTF-8 text at most 3x (three Hangul jamo, 9 bytes, become one syllable of 3); 4 leaves margin.
_NORMALIZATION_SHRINK = 4
_UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}
_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _bytes_per_token(backend: Any) -> int:
    """Most input bytes one token can stand for; 0 when unknown."""
    shrink = 1
    if backend.normalizer is not None:
        spec = json.loads(backend.to_str()).get("normalizer") or {}
        kinds = (
            [n.get("type") for n in spec.get("normalizers", [])]
            if spec.get("type") == "Sequence"
            else [spec.get("type")]
        )
        if not set(kinds) <= _UNICODE_FORMS:
            return 0
        shrink = _NORMALIZATION_SHRINK
    longest = max((len(t.encode("utf-8")) for t in backend.get_vocab(with_added_tokens=True)), default=0)
    return longest * shrink
