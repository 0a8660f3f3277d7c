"""Planning a run: validate inputs and settings, tokenize and segment, check the window. No forward pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..analysis import Analysis
from ..backends.base import Backend, local_kv_view, overlap_view, quote_refusal
from ..config import WiMConfig
from ..errors import ContextTooLongError, WiMInputError
from ..events import Margin
from ..inputs import InputDocument, as_documents, check_text
from ..prompts import ChatFrame, PromptSet, render, split_at_placeholder
from .segmenter import DOCUMENT_SEPARATOR, Context, segment_context

# A run's settings: the WiM's own (None), a WiMConfig, or a mapping of WiMConfig fields.
ConfigInput = WiMConfig | Mapping[str, Any] | None

# Tokens a margin's label ("Margin note 3 (part 5 of 9):") adds in the final prompt; used for the budget check.
_LABEL_TOKENS = 16


def default_segment_tokens(window: int | None) -> int:
    """The paper used 4096-token segments on 128k models; smaller windows get window/8, at least 256."""
    if not window:
        return 4096
    return min(4096, max(256, window // 8))


@dataclass(frozen=True)
class Plan:
    """Everything a run needs, validated and tokenized before any forward pass."""

    context: Context
    question: str  # for an analysis: its instruction
    config: WiMConfig
    head_ids: list[int]  # chat prefix + context opening
    margin_prompt_ids: list[int]  # instruction + question + chat suffix, appended after each segment
    segment_tokens: int
    # The margin prompt's first tokens, before the question: the same for every question, so a document cache keeps
    # their keys/values per segment and a later question computes only the rest.
    margin_head_length: int = 0
    analysis: Analysis | None = None  # a summary / analysis: notes instead of margins, a report instead of an answer
    # Most tokens the cache holds at once in this run (context, then a group's margin rows or the final prompt with
    # every margin and the answer): room reserved up front where the backend can.
    peak_tokens: int = 0
    # The margin prompt without the question (its head, what followed the question with it left out, the chat
    # suffix): `question_pmi` scores each margin after it too. Empty for an analysis.
    question_free_prompt_ids: list[int] = field(default_factory=list)

    @property
    def margin_head_ids(self) -> list[int]:
        return self.margin_prompt_ids[: self.margin_head_length]

    @property
    def n_segments(self) -> int:
        return len(self.context.segments)

    @property
    def full_ids(self) -> list[int]:
        """Every token the context prefill puts in the cache: what a reusable document cache is keyed on."""
        return list(self.head_ids) + [t for seg in self.context.segments for t in seg.token_ids]

    @property
    def segment_ends(self) -> list[int]:
        """Cache length at the end of each segment."""
        ends, pos = [], len(self.head_ids)
        for seg in self.context.segments:
            pos += seg.n_tokens
            ends.append(pos)
        return ends

    def segment_start(self, index: int) -> int:
        """Cache length before segment `index` (the end of the one before, or of the chat head)."""
        return self.segment_ends[index - 1] if index else len(self.head_ids)


def as_config(config: object, default: WiMConfig) -> WiMConfig:
    """`config` as a `WiMConfig`: None is the WiM's own, a mapping is validated into one."""
    if config is None:
        return default
    if isinstance(config, WiMConfig):
        return config
    if isinstance(config, Mapping):
        return WiMConfig.model_validate(dict(config))
    raise WiMInputError(f"config must be a WiMConfig or a mapping of its fields, not {type(config).__name__}.")


class Planner:
    """Turns (context, question, settings) into a `Plan` for one backend and prompt set."""

    def __init__(self, backend: Backend, prompts: PromptSet, *, has_classifier: bool, has_judge: bool = False) -> None:
        self.backend = backend
        self.prompts = prompts
        self.frame: ChatFrame = backend.chat_frame()
        self.has_classifier = has_classifier
        self.has_judge = has_judge

    def plan(self, context: object, question: object, config: WiMConfig) -> Plan:
        """Validate inputs and settings, tokenize and segment. Raises `WiMInputError` with the fix.

        `question` is a question string, or an `Analysis` (summary / document analysis: no question)."""
        cfg = config
        self.check_backend_settings(cfg)  # before anything is tokenized
        analysis = question if isinstance(question, Analysis) else None
        if analysis is not None and analysis.schema is not None and cfg.margin_mode == "quote":
            raise WiMInputError(
                f"margin_mode='quote' cannot write notes in schema {analysis.schema_name} (a note must be a JSON "
                "object, a quote copies the text); use margin_mode='free' for this analysis, or no schema."
            )
        if analysis is not None:
            # Notes are all kept: the margin prompt is the note instruction, the final prompt the task's.
            cfg = cfg.with_updates(classification="none", relevance_threshold=None)
            if "margin_stop" not in cfg.model_fields_set:  # a note lists several facts (or is a JSON object)
                cfg = cfg.with_updates(margin_stop="eos")
            instruction = self.prompts.note_instruction
            placeholder = "instruction"
            values = {"instruction": analysis.note_instruction, "format": analysis.format_text()}
            question = analysis.instruction
        else:
            check_text(question, "question")
            if not isinstance(question, str):
                raise WiMInputError(
                    f"question must be a string (or an Analysis for a summary), not {type(question).__name__}."
                )
            if not question.strip():
                raise WiMInputError("question is empty; pass the question WiM should answer.")
            instruction = self.prompts.margin_instruction_for(
                inline=cfg.classification == "inline", scope=cfg.margin_scope
            )
            placeholder, values = "question", {"question": question}
        problem = self._scoring_problem(cfg.classification)
        if problem is not None:
            if "classification" not in cfg.model_fields_set:  # the default: the closest score this backend supports
                return self.plan(context, analysis or question, cfg.with_updates(classification=self._fallback()))
            raise WiMInputError(problem)
        if cfg.classification == "auxiliary" and not self.has_classifier:
            raise WiMInputError(
                "classification='auxiliary' needs a classifier model; build WiM with classifier=... or "
                "WiM.from_pretrained(..., classifier_model=...), or pick 'same_model', 'inline' or 'none'."
            )
        if cfg.classification == "judge" and not self.has_judge:
            raise WiMInputError(
                "classification='judge' needs a judge model; build WiM with judge=<GGUF path, llama_cpp.Llama or "
                "backend> (e.g. WiM.from_gguf(path, judge=...) or wim.with_options(judge=...)), or pick another mode."
            )
        docs = as_documents(context)  # type and text checks before any tokenization
        b = self.backend
        head_ids = b.encode_template(self.frame.prefix) + b.encode_text(self.prompts.context_opening)
        shared, varying = split_at_placeholder(instruction, placeholder)
        margin_head_ids = b.encode_text(render(shared, **values))
        suffix_ids = b.encode_template(self.frame.suffix)
        margin_prompt_ids = margin_head_ids + b.encode_text(render(varying, **values)) + suffix_ids
        free_ids: list[int] = []
        if analysis is None:  # the question left out ("Question:" then the end of the user turn)
            free_ids = margin_head_ids + b.encode_text(render(varying, question="").strip()) + suffix_ids
        # The question's own size first: with a long question no segment size or context can fit.
        question_tokens = len(b.encode_text(question))
        for limit, what in self._limits():
            need = len(head_ids) + len(margin_prompt_ids) + cfg.margin_max_new_tokens
            if need > limit:
                raise ContextTooLongError(
                    f"the question is too long: it is {question_tokens} tokens, and its margin prompt alone "
                    f"({len(margin_prompt_ids)} tokens) with the chat prefix and margin_max_new_tokens="
                    f"{cfg.margin_max_new_tokens} needs {need} tokens, more than model {b.name!r}'s {what} of "
                    f"{limit}. Shorten the question (put long material in the context instead)."
                )
        if analysis is not None and analysis.schema is not None:
            self._check_note_budget(analysis, cfg)
        budget = cfg.segment_tokens or default_segment_tokens(b.max_context_tokens)
        if budget < len(margin_prompt_ids):
            raise WiMInputError(
                f"segment_tokens={budget} is smaller than the margin instruction with the question "
                f"({len(margin_prompt_ids)} tokens, {question_tokens} of them the question); use segment_tokens of at "
                f"least {len(margin_prompt_ids)} (a few times more is sensible), or shorten the question."
            )
        task = analysis or question
        self._check_window_early(docs, task, cfg, head_ids, margin_prompt_ids)
        ctx = segment_context(b, docs, budget, merge_documents=cfg.merge_documents)
        self._check_window(ctx.n_tokens, len(ctx.segments), task, cfg, head_ids, margin_prompt_ids)
        n = len(ctx.segments)
        rows = min(cfg.margin_batch_size, n) * (len(margin_prompt_ids) + cfg.margin_max_new_tokens)
        # A margin's text encoded again in the final prompt can take more tokens than were generated: twice, with room.
        label = len(b.encode_text(f"\n\nMargin note {n} (part {n} of {n}):\n"))
        answer = len(self.final_prompt_ids(task, [], n)) + n * (2 * cfg.margin_max_new_tokens + label)
        peak = len(head_ids) + ctx.n_tokens + max(rows, answer + cfg.answer_max_new_tokens)
        return Plan(
            ctx, question, cfg, head_ids, margin_prompt_ids, budget, len(margin_head_ids), analysis, peak, free_ids
        )

    def check_backend_settings(self, cfg: WiMConfig) -> None:
        """Refuse settings the backend cannot honour (quoted margins on a server, overlap where rows cannot share the
        prefill's batches), naming the fix."""
        if cfg.margin_mode == "quote" and not self.backend.capabilities.constrained_margins:
            raise WiMInputError(quote_refusal(self.backend.name))
        if cfg.overlap and not (overlap_view(self.backend) is not None or _server_overlap(self.backend)):
            raise WiMInputError(
                f"overlap=True needs a backend that decodes margins while it prefills the text after them (llama.cpp "
                f"in process: WiM.from_gguf / from_llama / from_ollama; vLLM or SGLang servers); "
                f"{self.backend.name!r} cannot. Leave overlap unset (None) to let the backend choose."
            )

    def _check_note_budget(self, analysis: Analysis, cfg: WiMConfig) -> None:
        """A note under a schema needs room for at least the JSON skeleton with short values."""
        need = len(self.backend.encode_text(analysis.note_skeleton()))
        if cfg.margin_max_new_tokens < need:
            raise WiMInputError(
                f"margin_max_new_tokens={cfg.margin_max_new_tokens} is too small for notes in schema "
                f"{analysis.schema_name}: its bare JSON form already takes {need} tokens. Raise margin_max_new_tokens "
                f"(at least {need}, better {2 * need}) or use a schema with fewer fields."
            )

    def _limits(self) -> list[tuple[int, str]]:
        """(tokens, what) of every length limit of the backend."""
        b = self.backend
        return [
            (n, what)
            for n, what in (
                (b.max_context_tokens, "context window"),
                (b.rollback_limit, "sliding attention window (the cache cannot be rolled back past it)"),
            )
            if n
        ]

    def _check_window_early(
        self,
        docs: Sequence[InputDocument],
        question: str | Analysis,
        cfg: WiMConfig,
        head: list[int],
        margin_prompt: list[int],
    ) -> None:
        """Refuse a context that cannot fit from its byte length alone, before tokenizing it (seconds per MB)."""
        limits = self._limits()
        if not limits:
            return
        text_bytes = sum(len(d.text.encode("utf-8")) for d in docs) + len(DOCUMENT_SEPARATOR) * (len(docs) - 1)
        at_least = self.backend.min_tokens(text_bytes)
        if at_least is not None and at_least > min(limit for limit, _ in limits):
            self._check_window(at_least, 1, question, cfg, head, margin_prompt, lower_bound=True)

    def _check_window(
        self,
        n_tokens: int,
        n_segments: int,
        question: str | Analysis,
        cfg: WiMConfig,
        head: list[int],
        margin_prompt: list[int],
        *,
        lower_bound: bool = False,
    ) -> None:
        b = self.backend
        final_prompt = self.final_prompt_ids(question, [], n_segments)
        margins_worst = n_segments * (cfg.margin_max_new_tokens + _LABEL_TOKENS)
        reading = len(head) + n_tokens
        need = reading + max(
            len(margin_prompt) + cfg.margin_max_new_tokens,
            len(final_prompt) + margins_worst + cfg.answer_max_new_tokens,
        )
        at_least = "at least " if lower_bound else ""
        for limit, what in self._limits():
            if need > limit:
                raise ContextTooLongError(
                    f"WiM needs {at_least or 'up to '}{need} tokens for this input but model {b.name!r} has a {what} "
                    f"of {limit} (over by {need - limit}{' or more' if lower_bound else ''}): context "
                    + (
                        f"at least {n_tokens} (from its byte length, before tokenizing)"
                        if lower_bound
                        else f"{n_tokens}"
                    )
                    + f", prompts {len(head) + len(final_prompt)}, margins up to {margins_worst} ({n_segments} x "
                    f"margin_max_new_tokens={cfg.margin_max_new_tokens} + labels), answer {cfg.answer_max_new_tokens}. "
                    "Shorten the context, lower margin_max_new_tokens/answer_max_new_tokens, or use a model with a "
                    "longer window."
                )

    def final_prompt_ids(self, question: str | Analysis, margins: Sequence[Margin], n_segments: int) -> list[int]:
        b = self.backend
        label = "Note" if isinstance(question, Analysis) else "Margin note"
        block = "\n\n".join(
            f"{label} {i} (part {m.segment_index + 1} of {n_segments}):\n{m.text}" for i, m in enumerate(margins, 1)
        )
        if isinstance(question, Analysis):
            body = render(
                self.prompts.final_report, notes=block or self.prompts.no_notes, instruction=question.instruction
            )
        else:
            body = render(self.prompts.final_answer, margins=block or self.prompts.no_margins, question=question)
        return b.encode_text(body) + b.encode_template(self.frame.suffix)

    def _scoring_problem(self, mode: str) -> str | None:
        """Why this backend cannot score margins in `mode` (None: it can)."""
        caps, name = self.backend.capabilities, self.backend.name
        if mode in ("segment_pmi", "question_pmi", "judge") and (not caps.packed_rows or caps.scoring != "rows"):
            why = "sliding-window layers" if caps.scoring == "plain" else "no prompt log-probabilities for such rows"
            return (
                f"classification={mode!r} scores each margin on the cache cut before its segment, which backend "
                f"{name!r} cannot do ({why}); use classification="
                + ("'pmi'" if caps.scoring == "plain" and caps.generation_logprobs else "'lexical' or 'same_model'")
                + " instead."
            )
        if mode in ("pmi", "calibrated") and caps.scoring == "none":
            return (
                f"classification={mode!r} needs the log-probabilities of given tokens, which backend {name!r} does not "
                "offer; use classification='lexical' (no model call) or 'same_model' (the model's reply) instead."
            )
        if mode in ("pmi", "segment_pmi", "question_pmi", "judge") and not caps.generation_logprobs:
            return (
                f"classification={mode!r} needs the log-probabilities of generated tokens, which backend {name!r} "
                "does not report; use classification='lexical' or 'same_model' instead."
            )
        return None

    def _fallback(self) -> str:
        """The default relevance mode where `segment_pmi` is not available: `pmi` if the backend can, else `lexical`."""
        return "pmi" if self._scoring_problem("pmi") is None else "lexical"


def _server_overlap(backend: Backend) -> bool:
    """A server that overlaps margins with the prefill through its scheduler (`PackedRequest.overlap`)."""
    caps = backend.capabilities
    return caps.overlap and caps.concurrent_requests and local_kv_view(backend) is None
