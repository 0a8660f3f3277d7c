"""The public WiM reader: construction, settings, and runs as streams of typed events, free of any framework.

wim = WiM.default()
for event in wim.stream(context, question):
    ...
result = wim.run(context, question)

The facade: it builds the frozen `Reader` a run needs (backend, planner, prompts, judges' models, document cache);
planning and the reading loop live in `reading/`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from .analysis import Analysis, WiMSummary
from .backends.base import Backend
from .config import WiMConfig
from .errors import WiMInputError
from .events import Margin, WiMEvent, WiMResult
from .prompts import PromptSet
from .reading import Reader, WiMStream
from .reading.doc_cache import DocumentCache
from .reading.margins import AsyncOnEvent, OnEvent, aread_until_answer, read_until_answer
from .reading.plan import ConfigInput, Plan, Planner, as_config, default_segment_tokens

__all__ = ["ConfigInput", "Plan", "WiM", "WiMStream", "default_segment_tokens"]


class WiM:
    """A WiM reader on one model. Build once, reuse for many calls; thread-safe."""

    def __init__(
        self,
        backend: Backend,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        classifier: Backend | None = None,
        document_cache: DocumentCache | Literal["auto"] | None = "auto",
        judge: Any = None,
    ) -> None:
        """`judge`: the auxiliary model of classification="judge", loaded once here and reused by every run: a GGUF
        path, a loaded `llama_cpp.Llama` (or LangChain's / LlamaIndex's wrapper of one), or a backend
        (docs/benchmarks.md, "An auxiliary judge model").

        `document_cache`: where prefilled documents are kept for later questions on them. "auto" (the default): a
        new `DocumentCache()` of its default size (512 MiB of keys/values, least recently used evicted) where the
        backend keeps keys/values in this process (a server keeps its own prefix cache); a `DocumentCache` of your
        own, shared or sized; None: no document cache, every run prefills its context."""
        self.backend = backend
        if document_cache == "auto":
            document_cache = DocumentCache() if backend.capabilities.local_document_cache else None
        self.document_cache: DocumentCache | None = document_cache
        self.config = config or WiMConfig()
        self.prompts = prompts or PromptSet.default()
        self.classifier = classifier
        self.judge: Backend | None = None if judge is None else _judge_backend(judge)
        self.frame = backend.chat_frame()
        self.planner = Planner(
            backend, self.prompts, has_classifier=classifier is not None, has_judge=self.judge is not None
        )
        self.planner.check_backend_settings(self.config)  # quoted margins or overlap the backend cannot: refused now
        self.reader = Reader(backend, self.planner, self.prompts, self.document_cache, classifier, self.judge)

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: Any,
        *,
        tokenizer: Any = None,
        classifier_model: Any = None,
        classifier_tokenizer: Any = None,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        document_cache: DocumentCache | Literal["auto"] | None = "auto",
        **load_options: Any,
    ) -> WiM:
        """WiM on a local model directory, a model id already in the Hugging Face cache (offline by default), or an
        already loaded model (`model=` a transformers causal LM, `tokenizer=` its tokenizer).

        `load_options` are those of `models.load_model_and_tokenizer`: `device`, `device_map`, `dtype` ("auto": the
        checkpoint's), `model_kwargs`, `tokenizer_kwargs`, `local_files_only`; they apply to the classifier too."""
        from .models import load_backend

        classifier = (
            load_backend(classifier_model, tokenizer=classifier_tokenizer, **load_options)
            if classifier_model is not None
            else None
        )
        return cls(
            load_backend(model, tokenizer=tokenizer, **load_options),
            config=config,
            prompts=prompts,
            classifier=classifier,
            document_cache=document_cache,
        )

    @classmethod
    def from_server(
        cls,
        base_url: str,
        *,
        tokenizer: Any,
        model: str | None = None,
        engine: str = "llama.cpp",
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        **server_options: Any,
    ) -> WiM:
        """WiM on a model served by a serving engine, as `ChatOpenAI(base_url=...)` or LlamaIndex's `OpenAILike` are
        built: `engine` is "llama.cpp" (llama-server), "vllm", "sglang" or "openai" (any OpenAI-compatible
        completions server); `tokenizer` the served model's local tokenizer directory (or a loaded tokenizer), checked
        against the server at start; `api_key` defaults to the WIM_SERVER_API_KEY environment variable. The server's
        prefix cache stands in for the document cache. See docs/serving.md for launch commands."""
        from .backends.server import ServerBackend, server_options_known

        unknown = sorted(set(server_options) - server_options_known())
        if unknown:
            raise WiMInputError(
                f"unknown option{'s' if len(unknown) > 1 else ''} {unknown} for WiM.from_server; valid: "
                f"{sorted({'tokenizer', 'config', 'prompts', *server_options_known()})}."
            )
        backend = ServerBackend(
            base_url,
            tokenizer=tokenizer,
            model=model,
            engine=engine,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            **server_options,
        )
        return cls(backend, config=config, prompts=prompts)

    @classmethod
    def from_gguf(
        cls,
        path: str | Any,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        judge: Any = None,
    ) -> WiM:
        """WiM on a GGUF file run by llama.cpp in this process (the `llamacpp` extra; no torch). `n_ctx`: the window
        (default the model's, at most 8192), `n_threads`: llama.cpp's threads, `n_gpu_layers`: layers on a GPU;
        `judge`: the model of classification="judge" (see `WiM`)."""
        from .llamacpp_models import load_gguf_backend

        backend = load_gguf_backend(path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers)
        return cls(backend, config=config, prompts=prompts, judge=judge)

    @classmethod
    def from_llama(
        cls,
        llm: Any,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        judge: Any = None,
    ) -> WiM:
        """WiM on an already loaded `llama_cpp.Llama` (or LangChain's `LlamaCpp`, LlamaIndex's `LlamaCPP`): its
        weights are shared, WiM reads in a llama.cpp context of its own. `judge`: as for `WiM`."""
        from .llamacpp_models import backend_from_llama

        backend = backend_from_llama(llm, n_ctx=n_ctx, n_threads=n_threads)
        return cls(backend, config=config, prompts=prompts, judge=judge)

    @classmethod
    def from_ollama(
        cls,
        name: str,
        *,
        models_dir: str | None = None,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
    ) -> WiM:
        """WiM on a model pulled by Ollama ("name:tag"), its GGUF found in the local store ($OLLAMA_MODELS or
        ~/.ollama/models; no Ollama server needed) and run by llama.cpp here."""
        from .llamacpp_models import load_ollama_backend

        backend = load_ollama_backend(
            name, models_dir=models_dir, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers
        )
        return cls(backend, config=config, prompts=prompts)

    @classmethod
    def from_model_id(
        cls,
        model_id: str,
        *,
        device: int | str | None = None,
        device_map: str | dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> WiM:
        """`from_pretrained` under the names LangChain's `HuggingFacePipeline.from_model_id` uses: `device` may be an
        int (-1: CPU, n: `cuda:n`), `model_kwargs` go to `AutoModelForCausalLM.from_pretrained`."""
        return cls.from_pretrained(model_id, device=device, device_map=device_map, model_kwargs=model_kwargs, **kwargs)

    @classmethod
    def default(
        cls,
        *,
        config: WiMConfig | None = None,
        document_cache: DocumentCache | Literal["auto"] | None = "auto",
        **load_options: Any,
    ) -> WiM:
        """WiM on the embedded SmolLM2-135M-Instruct (converted once to a local cache on first use).

        Shared: every call in a process with the same settings returns the same `WiM`, and every call with the same
        load options (`device`, `dtype`, ...) the same loaded model, so `WiMChain.default()`, `WiMLLM()` and
        `WiMSynthesizer()` hold one copy of the weights between them. `progress` (a callable given each status line
        of a first-time conversion) is not a setting."""
        return _shared_default(cls, config or WiMConfig(), document_cache, load_options)

    def with_options(
        self,
        *,
        config: WiMConfig | None = None,
        prompts: PromptSet | None = None,
        document_cache: DocumentCache | Literal["auto", "keep"] | None = "keep",
        judge: Any = None,
    ) -> WiM:
        """Another `WiM` on the same loaded model(s), no weights copied: other settings, prompts or document cache
        (each left out keeps this one's; `document_cache=None` turns it off, "auto" gives a new one), or a judge
        model added (`judge`, as for `WiM`; left out keeps this one's). To share a `WiM` itself, pass the same object
        everywhere (it is thread-safe)."""
        return type(self)(
            self.backend,
            config=config or self.config,
            prompts=prompts or self.prompts,
            classifier=self.classifier,
            document_cache=self.document_cache if document_cache == "keep" else document_cache,
            judge=self.judge if judge is None else judge,
        )

    @property
    def model_name(self) -> str:
        return self.backend.name

    # -- planning --------------------------------------------------------------------------------------
    def plan(self, context: object, question: object, config: ConfigInput = None) -> Plan:
        """Validate inputs and settings, tokenize and segment. Raises `WiMInputError` with the fix.

        `question` is a question string, or an `Analysis` (summary / document analysis: no question)."""
        return self.planner.plan(context, question, as_config(config, self.config))

    def final_prompt_ids(self, question: str | Analysis, margins: Sequence[Margin], n_segments: int) -> list[int]:
        """The tokens appended after the context for the answer: the kept margins (or notes) and the question."""
        return self.planner.final_prompt_ids(question, margins, n_segments)

    # -- running ---------------------------------------------------------------------------------------
    def stream(self, context: object, question: object, *, config: ConfigInput = None, **overrides: Any) -> WiMStream:
        """Start a run. Inputs are validated now (errors raise here); work happens as the stream is read."""
        cfg = as_config(config, self.config)
        return WiMStream(self.reader, self.plan(context, question, cfg.with_updates(**overrides) if overrides else cfg))

    def run(self, context: object, question: object, *, config: ConfigInput = None, **overrides: Any) -> WiMResult:
        stream = self.stream(context, question, config=config, **overrides)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def summarize(
        self, context: object, instruction: str | None = None, *, config: WiMConfig | None = None, **overrides: Any
    ) -> WiMSummary:
        """Summarise a long context: a note of each part's key facts (with the earlier text in view), then the summary
        from the whole context and the notes. `instruction` replaces the default summary instruction."""
        result = self.run(context, Analysis.summary(instruction), config=config, **overrides)
        assert isinstance(result, WiMSummary)
        return result

    def analyze(
        self,
        context: object,
        instruction: str,
        *,
        schema: type | None = None,
        note_instruction: str | None = None,
        config: WiMConfig | None = None,
        **overrides: Any,
    ) -> WiMSummary:
        """Carry out `instruction` ("list every obligation and its deadline") over a long context: notes under the
        instruction (or `note_instruction`) after each part, each validated against `schema` when given, then the
        report from the whole context and the notes."""
        task = Analysis.create(instruction, schema=schema, note_instruction=note_instruction)
        result = self.run(context, task, config=config, **overrides)
        assert isinstance(result, WiMSummary)
        return result

    def read_margins(
        self,
        context: object,
        question: object,
        *,
        config: ConfigInput = None,
        on_event: OnEvent | None = None,
        **overrides: Any,
    ) -> list[Margin]:
        """The margins-only run: every segment read and annotated, no answer decoded (the run ends where the answer
        would start, before its first forward pass). `on_event` sees each event up to there."""
        return read_until_answer(self.stream(context, question, config=config, **overrides), on_event)

    async def aread_margins(
        self,
        context: object,
        question: object,
        *,
        config: ConfigInput = None,
        on_event: AsyncOnEvent | None = None,
        **overrides: Any,
    ) -> list[Margin]:
        """`read_margins` with the model in a worker thread; `on_event` may be a coroutine function."""
        return await aread_until_answer(self.stream(context, question, config=config, **overrides), on_event)

    async def astream(
        self, context: object, question: object, *, config: ConfigInput = None, **overrides: Any
    ) -> AsyncIterator[WiMEvent]:
        """Async events: the model runs in a worker thread (contextvars copied), the event loop stays free."""
        stream = self.stream(context, question, config=config, **overrides)
        async for event in stream.aiter():
            yield event

    async def arun(
        self, context: object, question: object, *, config: ConfigInput = None, **overrides: Any
    ) -> WiMResult:
        stream = self.stream(context, question, config=config, **overrides)
        async for _ in stream.aiter():
            pass
        assert stream.result is not None
        return stream.result


# The process-wide defaults behind `WiM.default()`: loaded models by load options, WiMs by (class, settings, cache).
_defaults_lock = threading.Lock()
_default_backends: dict[str, Backend] = {}
_default_wims: dict[tuple[type, WiMConfig, int | str | None, str], WiM] = {}


def _shared_default(
    cls: type[WiM],
    config: WiMConfig,
    document_cache: DocumentCache | Literal["auto"] | None,
    load_options: dict[str, Any],
) -> WiM:
    from .models import load_default_backend

    progress = load_options.pop("progress", None)
    load_key = repr(sorted(load_options.items()))
    # The WiM holds its document cache, so the cache's id stays unique while its entry exists.
    cache_key = document_cache if document_cache == "auto" or document_cache is None else id(document_cache)
    key = (cls, config, cache_key, load_key)
    with _defaults_lock:  # one load even when several threads ask at once
        wim = _default_wims.get(key)
        if wim is None:
            backend = _default_backends.get(load_key)
            if backend is None:
                backend = _default_backends[load_key] = load_default_backend(progress=progress, **load_options)
            wim = _default_wims[key] = cls(backend, config=config, document_cache=document_cache)
        return wim


def _judge_backend(judge: Any) -> Backend:
    """The judge model as a backend (a backend as it is; a path or a `llama_cpp.Llama` loaded by llama.cpp), refused
    at once where it cannot score token rows (the judge's numbers are log-probabilities of given tokens)."""
    if not isinstance(judge, Backend):
        from .llamacpp_models import judge_backend

        judge = judge_backend(judge)
    if judge.capabilities.scoring != "rows":
        raise WiMInputError(
            f"the judge model {judge.name!r} cannot score token rows (its backend's scoring is "
            f"{judge.capabilities.scoring!r}); load the judge in process (a GGUF path or a llama_cpp.Llama)."
        )
    return judge
