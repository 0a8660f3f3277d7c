"""`WiMLLM`: the WiM reader's local model as a LlamaIndex LLM.

Set it as `Settings.llm` (or pass `llm=`) so that nothing in a pipeline silently falls back to LlamaIndex's default
OpenAI LLM (which `index.as_query_engine()` and chat engines look up when no llm is given).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field, PrivateAttr, ValidationError

from ..backends.base import GenerationRequest
from ..config import SamplingConfig
from ..engine import WiM
from ..errors import ContextTooLongError, WiMInputError
from ..inputs import check_text
from ..reading.asyncbridge import aiter_in_thread
from ..textstream import StopCut, TextDeltas, stop_list

DEFAULT_MAX_NEW_TOKENS = 256
# What `complete`/`chat`/... accept as keyword arguments: generation settings for that call only.
CALL_SETTINGS = (
    "max_new_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "do_sample",
    "seed",
    "stop",
)


class WiMLLM(CustomLLM):
    """Plain generation with the model of a `WiM` (the shared `WiM.default()` when none is given).

    Generation settings come, each one separately, from the call's keyword arguments (`complete(p, temperature=0.2)`),
    else this LLM's fields, else the model's `generation_config` (what `model.generate` would use), else greedy with
    256 new tokens. `temperature=0` means greedy; a temperature > 0 samples unless `do_sample=False` is given.
    `stop` (a string or a list of strings, per call or as a field) ends the text before the first stop sequence and
    stops decoding there. WiM's own reading settings (`WiMConfig.sampling`) do not apply here.
    """

    max_tokens: int | None = Field(None, ge=1, description="tokens to generate per call")
    max_new_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_tokens", exclude=True)
    temperature: float | None = Field(None, ge=0, description="0: greedy; > 0: sample at this temperature")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="0 disables top-k filtering")
    repetition_penalty: float | None = Field(None, gt=0)
    do_sample: bool | None = None
    seed: int | None = Field(None, description="seed for sampling")
    stop: list[str] | None = Field(None, description="the text ends before the first of these strings")
    _wim: WiM = PrivateAttr()

    def __init__(self, wim: WiM | None = None, **kwargs: Any) -> None:
        if kwargs.get("max_new_tokens") is not None:  # the deprecated alias sets max_tokens
            kwargs["max_tokens"] = _budget(kwargs, "WiMLLM")
        super().__init__(**kwargs)
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
            num_output=self._settings({})[0],
            is_chat_model=True,
            model_name=b.name,
        )

    # -- settings --------------------------------------------------------------------------------------
    def _settings(self, kwargs: dict[str, Any]) -> tuple[int, SamplingConfig]:
        """(max new tokens, sampling) for one call: call kwargs > fields > the model's generation_config."""
        if unknown := sorted(set(kwargs) - set(CALL_SETTINGS)):
            raise WiMInputError(
                f"WiMLLM got unknown setting(s) {', '.join(unknown)}; per call it accepts {', '.join(CALL_SETTINGS)}."
            )
        gen = getattr(getattr(self._wim.backend, "model", None), "generation_config", None)

        def pick(name: str) -> Any:
            if kwargs.get(name) is not None:
                return kwargs[name]
            if getattr(self, name) is not None:
                return getattr(self, name)
            return getattr(gen, name, None)

        max_new = _budget(kwargs, "WiMLLM call")
        if max_new is None:
            max_new = self.max_tokens if self.max_tokens is not None else getattr(gen, "max_new_tokens", None)
        temperature = pick("temperature")
        explicit_t = kwargs.get("temperature", self.temperature)
        do_sample = kwargs.get("do_sample", self.do_sample)
        if do_sample is None:  # a temperature given here decides; otherwise the model's own choice
            do_sample = explicit_t > 0 if explicit_t is not None else bool(getattr(gen, "do_sample", False))
        if do_sample and temperature == 0:
            raise WiMInputError("temperature=0 means greedy decoding; with do_sample=True pass a temperature > 0.")
        try:
            sampling = SamplingConfig(
                do_sample=do_sample,
                temperature=temperature or 1.0,
                top_p=pick("top_p") or 1.0,
                top_k=pick("top_k") or 0,
                repetition_penalty=pick("repetition_penalty") or 1.0,
                seed=pick("seed"),
            )
            max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else int(max_new)
            if max_new < 1:
                raise ValueError("max_tokens must be at least 1")
        except (ValidationError, ValueError, TypeError) as exc:
            raise WiMInputError(f"invalid WiMLLM generation setting: {exc}") from exc
        return max_new, sampling

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
        return b.encode_template(b.render_chat(msgs))

    def _request(self, ids: list[int], kwargs: dict[str, Any]) -> _Call:
        """Validated now, before any forward pass: settings, stop sequences and the model window."""
        b = self._wim.backend
        kwargs = dict(kwargs)
        stops = stop_list(kwargs.pop("stop", None) or self.stop)
        max_new, sampling = self._settings(kwargs)
        window = b.max_context_tokens
        if window and len(ids) + max_new > window:
            raise ContextTooLongError(
                f"prompt of {len(ids)} tokens + max_tokens={max_new} exceeds model {b.name!r}'s window of "
                f"{window}; shorten the prompt or lower max_tokens (WiM itself reads long contexts: use "
                "WiMSynthesizer/WiMQueryEngine for those)."
            )
        return _Call(GenerationRequest(ids, max_new, sampling), stops)

    def _generate(self, call: _Call) -> Iterator[tuple[str, str]]:
        """(text so far, delta) pairs, up to the first stop sequence (decoding ends there)."""
        b = self._wim.backend
        deltas = TextDeltas.for_backend(b)
        cut = StopCut(call.stops, lstrip=False)
        text = ""
        tokens = b.generate(b.new_cache(), call.request)
        try:
            for tok in tokens:
                if (delta := deltas.push(tok)) and (delta := cut.push(delta)):
                    text += delta
                    yield text, delta
                if cut.stopped:
                    return
        finally:
            tokens.close()
        if delta := cut.push(deltas.flush()) + cut.flush():
            yield text + delta, delta

    def _final_text(self, request: _Call) -> str:
        text = ""
        for so_far, _ in self._generate(request):
            text = so_far
        return text.strip()

    def _completion(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        return CompletionResponse(text=self._final_text(self._request(self._completion_ids(prompt, formatted), kwargs)))

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        text = self._final_text(self._request(self._chat_ids(messages), kwargs))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    def _completion_stream(self, request: _Call) -> CompletionResponseGen:
        for text, delta in self._generate(request):
            yield CompletionResponse(text=text, delta=delta)

    def _chat_stream(self, request: _Call) -> ChatResponseGen:
        for text, delta in self._generate(request):
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)

    # -- LlamaIndex API --------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completion_stream(self._request(self._completion_ids(prompt, formatted), kwargs))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(self._request(self._chat_ids(messages), kwargs))

    # Async: tokenizing and every model step run in a worker thread (contextvars copied), the event loop stays free.
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._completion, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        ids = await asyncio.to_thread(self._completion_ids, prompt, formatted)
        return aiter_in_thread(self._completion_stream(self._request(ids, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        ids = await asyncio.to_thread(self._chat_ids, messages)
        return aiter_in_thread(self._chat_stream(self._request(ids, kwargs)))


def _budget(settings: dict[str, Any], owner: str) -> int | None:
    """`max_tokens` among `settings`, or its deprecated alias `max_new_tokens` (warned; giving both is an error)."""
    budget, old = settings.get("max_tokens"), settings.get("max_new_tokens")
    if old is None:
        return budget
    warnings.warn(
        f"{owner}: max_new_tokens is deprecated, use max_tokens (LlamaIndex's name for the output budget); the alias "
        "will be removed in a future release.",
        DeprecationWarning,
        stacklevel=3,
    )
    if budget is not None:
        raise WiMInputError("pass max_tokens only (max_new_tokens is its deprecated alias), not both.")
    return int(old) if isinstance(old, int) else old


@dataclass(frozen=True)
class _Call:
    """One generation call, validated: the request and the stop sequences its text ends before."""

    request: GenerationRequest
    stops: list[str]
