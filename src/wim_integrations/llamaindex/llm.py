"""`WiMLLM`: the WiM reader's local model as a LlamaIndex LLM.

Set it as `Settings.llm` (or pass `llm=`) so that nothing in a pipeline silently falls back to LlamaIndex's default
OpenAI LLM (which `index.as_query_engine()` and chat engines look up when no llm is given).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field, PrivateAttr

from ..backends.base import GenerationRequest
from ..engine import WiM
from ..errors import ContextTooLongError, WiMInputError
from ..segmenter import check_text
from ..textstream import TextDeltas


class WiMLLM(CustomLLM):
    """Plain generation with the model of a `WiM` (the embedded SmolLM2 when none is given)."""

    max_new_tokens: int = Field(256, ge=1, description="tokens to generate per call")
    _wim: WiM = PrivateAttr()

    def __init__(self, wim: WiM | None = None, *, max_new_tokens: int = 256, **kwargs: Any) -> None:
        super().__init__(max_new_tokens=max_new_tokens, **kwargs)
        self._wim = wim if wim is not None else WiM.default()

    @classmethod
    def class_name(cls) -> str:
        return "WiMLLM"

    @property
    def wim(self) -> WiM:
        return self._wim

    @property
    def metadata(self) -> LLMMetadata:
        b = self._wim.backend
        return LLMMetadata(
            context_window=b.max_context_tokens or 4096,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=b.name,
        )

    # -- prompt building -------------------------------------------------------------------------------
    def _completion_ids(self, prompt: str, formatted: bool) -> list[int]:
        b, frame = self._wim.backend, self._wim.frame
        check_text(prompt, "prompt")
        if formatted and not prompt:
            raise WiMInputError("prompt is empty and formatted=True, so there is nothing to continue; pass a prompt.")
        if formatted:  # already in the model's chat format
            return b.encode_template(prompt)
        return frame.user_turn_ids(b, prompt)

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        b = self._wim.backend
        if not messages:
            raise WiMInputError("chat() got no messages; pass at least one ChatMessage.")
        if not self._wim.frame.native:
            body = "\n\n".join(f"{m.role.value}: {m.content or ''}" for m in messages)
            return self._completion_ids(body, formatted=False)
        for i, m in enumerate(messages):
            check_text(m.content or "", f"message {i}")
        roles = {MessageRole.SYSTEM, MessageRole.USER, MessageRole.ASSISTANT}
        msgs = [{"role": m.role.value if m.role in roles else "user", "content": m.content or ""} for m in messages]
        text = b.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return b.encode_template(text)

    def _generate(self, ids: list[int], **kwargs: Any) -> Iterator[tuple[str, str]]:
        """(text so far, delta) pairs."""
        b = self._wim.backend
        max_new = kwargs.get("max_new_tokens", self.max_new_tokens)
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise WiMInputError(f"max_new_tokens must be a positive integer, not {max_new!r}.")
        window = b.max_context_tokens
        if window and len(ids) + max_new > window:
            raise ContextTooLongError(
                f"prompt of {len(ids)} tokens + max_new_tokens={max_new} exceeds model {b.name!r}'s window of "
                f"{window}; shorten the prompt or lower max_new_tokens (WiM itself reads long contexts: use "
                "WiMSynthesizer/WiMQueryEngine for those)."
            )
        deltas = TextDeltas(b.decode)
        request = GenerationRequest(ids, max_new, self._wim.config.sampling)
        for tok in b.generate(b.new_cache(), request):
            if delta := deltas.push(tok):
                yield deltas.text, delta

    def _final_text(self, ids: list[int], **kwargs: Any) -> str:
        text = ""
        for so_far, _ in self._generate(ids, **kwargs):
            text = so_far
        return text

    # -- LlamaIndex API --------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = self._final_text(self._completion_ids(prompt, formatted), **kwargs)
        return CompletionResponse(text=text.strip())

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        ids = self._completion_ids(prompt, formatted)

        def gen() -> CompletionResponseGen:
            for text, delta in self._generate(ids, **kwargs):
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        text = self._final_text(self._chat_ids(messages), **kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text.strip()))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        ids = self._chat_ids(messages)

        def gen() -> ChatResponseGen:
            for text, delta in self._generate(ids, **kwargs):
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)

        return gen()
