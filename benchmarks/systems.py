"""The readers compared, all on one backend with the same greedy decoding and the same answer budget.

- `long_context`: the whole context and the question in one prompt (the paper's "LLM" baseline).
- `wim`: the engine's default (margins + full context).
- `wim_margins_only`, `rag_classifier`: the paper's ablations. They reuse the margins of the task's `wim` run (the
  reading pass is identical) and answer from a fresh prompt: only the relevant margins, or only the segments whose
  margin was classified relevant (no margins). Their time is the `wim` reading time + their own answer time.
- `wim[field=value,...]` and the ablations in that form: the same with `WiMConfig` overrides (see variants.py); an
  ablation reuses the margins of the `wim` variant with the same overrides.
- `refine`, `tree_summarize`: LlamaIndex response synthesizers over the same segments, with the same model through a
  minimal `CustomLLM` (`BackendLLM` below).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wim_integrations import WiM, WiMConfig, WiMResult
from wim_integrations.backends.base import Backend, GenerationRequest
from wim_integrations.prompts import render

from .relevance import annotate_margin
from .tasks import Task
from .variants import BASE_SYSTEMS, SystemSpec

SYSTEMS = BASE_SYSTEMS
_WIM, _MARGINS_ONLY, _RAG = SystemSpec("wim"), SystemSpec("wim_margins_only"), SystemSpec("rag_classifier")

# Baseline prompts use the same opening and closing wording as WiM's templates, minus the margin notes.
_TEXT_ANSWER = (
    "{{opening}}{{text}}\n\n=== END OF TEXT ===\nNow answer the question using the text. Be concise.\n\n"
    "Question: {{question}}"
)
_NOTES_ANSWER = (
    "While reading a long text part by part, you wrote these margin notes: short extracts of the parts that matter "
    "for the question, in the order they appear in the text.\n\n{{margins}}\n\nNow answer the question using the "
    "margin notes. Be concise.\n\nQuestion: {{question}}"
)


@dataclass
class SystemOutput:
    answer: str
    seconds: float
    generated_tokens: int
    prompt_tokens: int
    llm_calls: int
    detail: dict[str, Any] = field(default_factory=dict)


class Reader:
    """Shared state for one model: the backend, its chat frame, the base WiM settings and each (WiM variant, task)'s
    WiM result."""

    def __init__(
        self, backend: Backend, config: WiMConfig, classifier: Backend | None = None, judge: Any = None
    ) -> None:
        self.backend = backend
        self.config = config
        # classifier: for classification="auxiliary". No document cache: every system's time is a first read of its
        # task (with one, the second WiM variant on a task would start from the first one's prefilled document).
        # judge: for classification="judge" (a GGUF path or a backend), loaded once.
        self.wim = WiM(backend, config=config, classifier=classifier, document_cache=None, judge=judge)
        self.frame = backend.chat_frame()
        self.wim_results: dict[tuple[str, str], WiMResult] = {}  # (variant name, e.g. "wim[...]", task id) -> result

    def generate(self, body: str, max_new_tokens: int) -> tuple[str, int, int]:
        """One plain chat turn from an empty cache: (text, generated tokens, prompt tokens)."""
        b = self.backend
        ids = self.frame.user_turn_ids(b, body)
        out = list(b.generate(b.new_cache(), GenerationRequest(ids, max_new_tokens, self.config.sampling)))
        return b.decode(out).strip(), len(out), len(ids)

    def run_wim(self, task: Task, spec: SystemSpec = _WIM) -> WiMResult:
        config = spec.config(self.config).with_updates(answer_max_new_tokens=task.answer_tokens)
        result = self.wim.run(task.context, task.question, config=config)
        self.wim_results[(spec.reads_with or "wim", task.id)] = result
        return result

    def wim_result(self, task: Task, spec: SystemSpec = _WIM) -> tuple[WiMResult, bool]:
        """The task's result of the WiM variant `spec` reads with (from this run or the results file) and whether it
        was computed just now."""
        key = (spec.reads_with or "wim", task.id)
        if key in self.wim_results:
            return self.wim_results[key], False
        return self.run_wim(task, spec), True


def _reading_seconds(r: WiMResult) -> float:
    return r.timings.prefill_seconds + r.timings.margin_seconds + r.timings.classify_seconds


def _wim_generated(r: WiMResult) -> int:
    return r.tokens.margin_generated + r.tokens.classifier_generated


def _wim_calls(r: WiMResult, config: WiMConfig) -> int:
    """Model calls of a WiM read: one margin per segment; one judge prompt per margin where a model judges each
    (same_model, auxiliary, calibrated); one packed pass for all margins (pmi, segment_pmi, question_pmi); none for
    the rest."""
    judge = {
        "same_model": r.n_segments,
        "auxiliary": r.n_segments,
        "calibrated": r.n_segments,
        "pmi": 1,
        "segment_pmi": 1,
        "question_pmi": 1,
        "judge": 2,  # the main model's pass and the judge model's
    }
    return r.n_segments + judge.get(config.classification, 0)


def margin_records(task: Task, r: WiMResult) -> list[dict[str, Any]]:
    """Per margin: where it was written, what it says, its verdict and score, and its ground truth (relevance.py)."""
    return [
        annotate_margin(
            task,
            {
                "segment": m.segment_index,
                "char_span": list(m.char_span),
                "text": m.text,
                "verdict": m.verdict,
                "relevant": m.relevant,
                "score": m.score,
                **({"score_terms": m.score_terms} if m.score_terms is not None else {}),
                "n_tokens": m.n_tokens,
            },
        )
        for m in r.margins
    ]


def run_long_context(reader: Reader, task: Task, spec: SystemSpec) -> SystemOutput:
    t0 = time.perf_counter()
    body = render(_TEXT_ANSWER, opening=reader.wim.prompts.context_opening, text=task.context, question=task.question)
    answer, n_out, n_in = reader.generate(body, task.answer_tokens)
    return SystemOutput(answer, time.perf_counter() - t0, n_out, n_in, 1)


def run_wim(reader: Reader, task: Task, spec: SystemSpec = _WIM) -> SystemOutput:
    t0 = time.perf_counter()
    r = reader.run_wim(task, spec)
    return SystemOutput(
        r.answer,
        time.perf_counter() - t0,
        _wim_generated(r) + r.tokens.answer_generated,
        r.tokens.context + r.tokens.prompt + r.tokens.answer_prompt,
        1 + _wim_calls(r, spec.config(reader.config)),
        {
            "n_segments": r.n_segments,
            "n_relevant": len(r.relevant_margins),
            "margins": margin_records(task, r),
            "wim_result": r.model_dump(mode="json"),
        },
    )


def _derived(reader: Reader, task: Task, spec: SystemSpec, body_of: Callable[[WiMResult], str]) -> SystemOutput:
    r, _ = reader.wim_result(task, spec)
    t0 = time.perf_counter()
    answer, n_out, n_in = reader.generate(body_of(r), task.answer_tokens)
    own = time.perf_counter() - t0
    return SystemOutput(
        answer,
        _reading_seconds(r) + own,
        _wim_generated(r) + n_out,
        r.tokens.context + r.tokens.prompt + n_in,
        1 + _wim_calls(r, spec.config(reader.config)),
        {"n_relevant": len(r.relevant_margins), "answer_seconds": own, "reads_with": spec.reads_with},
    )


def run_margins_only(reader: Reader, task: Task, spec: SystemSpec = _MARGINS_ONLY) -> SystemOutput:
    def body(r: WiMResult) -> str:
        notes = "\n\n".join(
            f"Margin note {i} (part {m.segment_index + 1} of {r.n_segments}):\n{m.text}"
            for i, m in enumerate(r.relevant_margins, 1)
        )
        return render(_NOTES_ANSWER, margins=notes or reader.wim.prompts.no_margins, question=task.question)

    return _derived(reader, task, spec, body)


def run_rag_classifier(reader: Reader, task: Task, spec: SystemSpec = _RAG) -> SystemOutput:
    segments = reader.wim.plan(task.context, task.question, spec.config(reader.config)).context.segments

    def body(r: WiMResult) -> str:
        keep = {m.segment_index for m in r.relevant_margins}
        text = (
            "\n\n[...]\n\n".join(s.text.strip() for s in segments if s.index in keep) or "(no part was found relevant)"
        )
        return render(_TEXT_ANSWER, opening=reader.wim.prompts.context_opening, text=text, question=task.question)

    return _derived(reader, task, spec, body)


# -- LlamaIndex peers -----------------------------------------------------------------------------------------------
def _backend_llm_class() -> type:
    """Defined lazily so the suite imports without llama-index-core (only these two systems need it)."""
    from llama_index.core.llms import CompletionResponse, CompletionResponseGen, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback
    from pydantic import PrivateAttr

    class BackendLLM(CustomLLM):
        """A completion LLM over a WiM backend: each prompt is one chat turn in the model's chat frame.

        A stand-in until `wim_integrations.llamaindex.WiMLLM` exists; counts calls and tokens for the benchmark."""

        context_window: int = 8192
        num_output: int = 256
        model_name: str = "wim-backend"
        calls: int = 0
        generated_tokens: int = 0
        prompt_tokens: int = 0
        _reader: Any = PrivateAttr()

        def __init__(self, reader: Reader, **kw: Any) -> None:
            super().__init__(**kw)
            self._reader = reader

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(
                context_window=self.context_window, num_output=self.num_output, model_name=self.model_name
            )

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            text, n_out, n_in = self._reader.generate(prompt, self.num_output)
            self.calls += 1
            self.generated_tokens += n_out
            self.prompt_tokens += n_in
            return CompletionResponse(text=text)

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
            def gen() -> Iterator[CompletionResponse]:
                response = self.complete(prompt, formatted=formatted)
                yield CompletionResponse(text=response.text, delta=response.text)

            return gen()

    return BackendLLM


def run_llamaindex(reader: Reader, task: Task, mode: str) -> SystemOutput:
    from llama_index.core import PromptHelper, get_response_synthesizer
    from llama_index.core.prompts.default_prompts import (
        DEFAULT_REFINE_PROMPT_TMPL,
        DEFAULT_TEXT_QA_PROMPT_TMPL,
        DEFAULT_TREE_SUMMARIZE_TMPL,
    )
    from llama_index.core.response_synthesizers.refine import DEFAULT_RESPONSE_PADDING_SIZE

    t0 = time.perf_counter()
    segments = reader.wim.plan(task.context, task.question).context.segments
    # A window that holds exactly one of our segments + the largest synthesizer prompt + the answer, so refine and
    # tree_summarize work segment by segment instead of packing the whole text into one call (which would just be
    # long_context with another prompt).
    b = reader.backend
    prompt_tokens = max(
        len(b.encode_text(t.format(context_str="", context_msg="", query_str=task.question, existing_answer="")))
        for t in (DEFAULT_TEXT_QA_PROMPT_TMPL, DEFAULT_REFINE_PROMPT_TMPL, DEFAULT_TREE_SUMMARIZE_TMPL)
    )
    window = max(s.n_tokens for s in segments) + prompt_tokens + 2 * task.answer_tokens + 16
    if mode == "refine":  # refine reserves extra room for its growing answer when it packs chunks
        window += DEFAULT_RESPONSE_PADDING_SIZE
    llm = _backend_llm_class()(reader, context_window=window, num_output=task.answer_tokens, model_name=b.name)
    helper = PromptHelper(
        context_window=window, num_output=task.answer_tokens, chunk_overlap_ratio=0.0, tokenizer=b.encode_text
    )
    synth = get_response_synthesizer(llm=llm, prompt_helper=helper, response_mode=mode)
    response = synth.get_response(query_str=task.question, text_chunks=[s.text for s in segments])
    return SystemOutput(
        str(response).strip(), time.perf_counter() - t0, llm.generated_tokens, llm.prompt_tokens, llm.calls
    )


RUNNERS: dict[str, Callable[[Reader, Task, SystemSpec], SystemOutput]] = {
    "long_context": run_long_context,
    "wim": run_wim,
    "wim_margins_only": run_margins_only,
    "rag_classifier": run_rag_classifier,
    "refine": lambda reader, task, _spec: run_llamaindex(reader, task, "refine"),
    "tree_summarize": lambda reader, task, _spec: run_llamaindex(reader, task, "tree_summarize"),
}


def run_system(reader: Reader, spec: SystemSpec, task: Task) -> SystemOutput:
    return RUNNERS[spec.base](reader, task, spec)
