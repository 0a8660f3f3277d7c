"""The tokenizer and chat template of a GGUF model, read through llama.cpp: no torch, no transformers.

Token ids come from llama.cpp's own tokenizer (the one the model runs with), the chat template from the file's
`tokenizer.chat_template` metadata, rendered with jinja2 the way transformers renders it, so prompts built here equal
those of the transformers path on the same model (tests/llamacpp/test_gguf_tokenizer.py)."""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..errors import WiMInputError
from ..prompts import ChatFrame


class GGUFTokenizer:
    """llama.cpp's tokenizer of a loaded model (`llama_cpp` low-level API), thread-safe through `lock`.

    Also offers `chat_template` and `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`, the
    two members `ChatFrame.from_tokenizer` reads, so the frame is cut the same way as on a Hugging Face tokenizer."""

    def __init__(self, model: Any, name: str) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.model = model  # a llama_model pointer; its owner keeps it alive
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.name_or_path = name
        self.lock = threading.RLock()
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.chat_template: str | None = self.metadata("tokenizer.chat_template")
        self.bos_token = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_token = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))
        self._frame: ChatFrame | None = None
        self._longest_piece: int | None = None
        self._template: Any = None

    # -- metadata ----------------------------------------------------------------------------------------
    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, None when the file lacks it."""
        size = 1 << 12
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1  # the value was cut: ask again with room for all of it

    def _special_text(self, token: int) -> str:
        return "" if token < 0 else self.piece(token, special=True).decode("utf-8", errors="replace")

    @property
    def eos_ids(self) -> set[int]:
        """Every end-of-generation token of the vocabulary (eos, eot, im_end, ...), as llama.cpp marks them."""
        return {t for t in range(self.n_vocab) if self._lib.llama_vocab_is_eog(self.vocab, t)}

    # -- tokens ------------------------------------------------------------------------------------------
    def _tokenize(self, text: str, *, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        with self.lock:
            while True:
                buf = (self._lib.llama_token * n_max)()
                n = self._lib.llama_tokenize(self.vocab, data, len(data), buf, n_max, False, parse_special)
                if n >= 0:
                    return list(buf[:n])
                n_max = -n  # too small: llama.cpp returns minus the count it needs

    def encode_text(self, text: str) -> list[int]:
        """Tokens of user text (special-token strings inside it stay plain text)."""
        return self._tokenize(text, parse_special=False)

    def encode_template(self, text: str) -> list[int]:
        """Tokens of template text (special-token strings become special tokens)."""
        return self._tokenize(text, parse_special=True)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes a token stands for (empty for a control token unless `special`)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Tokens of user text and the character offset where each starts: the token pieces laid end to end over the
        text's UTF-8 bytes (a token that starts inside a character gets that character's offset, as in transformers)."""
        ids = self.encode_text(text)
        data = text.encode("utf-8")
        pieces = [self.piece(t) for t in ids]
        joined = b"".join(pieces)
        shift = 0
        if joined != data:
            # SentencePiece vocabularies add a space before the first word; anything else is not a plain cut.
            if joined == b" " + data:
                shift = 1
            else:
                raise WiMInputError(
                    f"the tokenizer of {self.name_or_path!r} does not give the text's bytes back token by token (it "
                    "normalizes text), so WiM cannot cut segments on its tokens; use the transformers path "
                    "(WiM.from_pretrained) for this model."
                )
        char_at = [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]
        char_at.append(len(text))
        offsets, pos = [], 0
        for p in pieces:
            offsets.append(char_at[max(0, pos - shift)])
            pos += len(p)
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        """Text of tokens, special tokens left out (transformers' `skip_special_tokens=True`)."""
        data = b"".join(self.piece(t) for t in ids)
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        """One token's text at a time; None while a character's bytes are incomplete."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def step(token: int) -> str | None:
            return decoder.decode(self.piece(token)) or None

        return step

    def min_tokens(self, n_bytes: int) -> int | None:
        """A lower bound on the tokens of `n_bytes` bytes of text: no token stands for more bytes than its piece."""
        if self._longest_piece is None:
            with self.lock:
                self._longest_piece = max((len(self.piece(t)) for t in range(self.n_vocab)), default=0)
        return -(-n_bytes // self._longest_piece) if self._longest_piece else None

    # -- chat template -----------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, tokenize: bool = False, add_generation_prompt: bool = True
    ) -> str:
        """The conversation rendered by the GGUF's chat template (jinja2, as transformers renders it)."""
        if tokenize:
            raise ValueError("GGUFTokenizer.apply_chat_template renders text only (tokenize=False)")
        if not self.chat_template:
            raise WiMInputError(f"{self.name_or_path!r} has no chat template in its GGUF metadata.")
        if self._template is None:
            self._template = _compile(self.chat_template)
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        )

    def chat_frame(self, *, allow_plain: bool = True) -> ChatFrame:
        if self._frame is None:
            with self.lock:
                self._frame = ChatFrame.from_tokenizer(self, allow_plain=allow_plain)
        return self._frame

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        if self.chat_template:
            return self.apply_chat_template(messages, add_generation_prompt=True)
        frame = self.chat_frame()
        return frame.prefix + "\n\n".join(m["content"] for m in messages) + frame.suffix


def _compile(source: str) -> Any:
    """The template in a sandboxed jinja2 environment with transformers' settings and helpers."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None) -> str:
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=False)
