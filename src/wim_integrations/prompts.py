"""Prompt texts (from `templates/`) and the model's chat template, split around the long context.

User text is never passed through `str.format`: placeholders `{{name}}` in a template are filled in one pass
over the template, so braces or placeholder-looking text inside a question or a margin stay as they are.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import WiMInputError
from .inputs import check_text

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_SENTINEL = "\x00WIM_CONTENT\x00"

# The placeholders each prompt is filled with, and those it must keep: a prompt without {{question}} or {{margins}}
# would silently answer without them. Checked whenever a `PromptSet` is made (overrides included).
_QUESTION = frozenset({"question"})
PLACEHOLDERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # name -> (allowed, required)
    "context_opening": (frozenset(), frozenset()),
    "margin_instruction": (_QUESTION, _QUESTION),
    "margin_instruction_inline": (_QUESTION, _QUESTION),
    "margin_instruction_segment": (_QUESTION, _QUESTION),
    "margin_instruction_inline_segment": (_QUESTION, _QUESTION),
    "classification": (frozenset({"question", "margin"}), frozenset({"question", "margin"})),
    "final_answer": (frozenset({"margins", "question"}), frozenset({"margins", "question"})),
    "no_margins": (frozenset(), frozenset()),
    "note_instruction": (frozenset({"instruction", "format"}), frozenset({"instruction", "format"})),
    "final_report": (frozenset({"notes", "instruction"}), frozenset({"notes", "instruction"})),
    "no_notes": (frozenset(), frozenset()),
}

# Used when a tokenizer has no chat template; documented in docs/architecture.md.
PLAIN_PREFIX = "User:\n"
PLAIN_SUFFIX = "\n\nAssistant:\n"


def render(template: str, **values: str) -> str:
    """Fill `{{name}}` placeholders in one pass; a missing value is an error, extra values are ignored."""

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(fill, template)


def without_placeholders(template: str) -> str:
    """The template's own text, its `{{name}}` placeholders left empty."""
    return _PLACEHOLDER.sub("", template)


def check_prompt(name: str, text: object) -> str:
    """`text` if it can be prompt `name`: a string whose placeholders are those the prompt is filled with, the
    required ones present; else a `WiMInputError` naming the problem and the fix."""
    if not isinstance(text, str):
        raise WiMInputError(f"prompt {name!r} must be a string, not {type(text).__name__}.")
    check_text(text, f"prompt {name!r}")
    allowed, required = PLACEHOLDERS[name]
    used = set(_PLACEHOLDER.findall(text))
    shown = ", ".join("{{" + p + "}}" for p in sorted(allowed)) or "none"
    if unknown := sorted(used - allowed):
        raise WiMInputError(
            f"prompt {name!r} has unknown placeholder(s) {['{{' + p + '}}' for p in unknown]}; it can use: {shown}."
        )
    if missing := sorted(required - used):
        raise WiMInputError(
            f"prompt {name!r} lacks the placeholder(s) {['{{' + p + '}}' for p in missing]}, so what they stand for "
            f"would be left out of the prompt; put them where that text belongs (it can use: {shown})."
        )
    return text


def _templates_dir() -> Path:
    packaged = resources.files("wim_integrations") / "templates"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "templates"  # source checkout


@cache
def _read_template(name: str) -> str:
    path = _templates_dir() / f"{name}.txt"
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text  # files end with one newline by convention


@dataclass(frozen=True)
class PromptSet:
    """The WiM prompt texts. Override any of them with `PromptSet.default().with_overrides(...)`."""

    context_opening: str
    margin_instruction: str  # about the text read so far
    margin_instruction_inline: str
    margin_instruction_segment: str  # about the part just read (margin_scope="segment")
    margin_instruction_inline_segment: str
    classification: str
    final_answer: str
    no_margins: str
    note_instruction: str  # summaries and analyses: the note written after each part ({{instruction}}, {{format}})
    final_report: str  # summaries and analyses: the final pass ({{notes}}, {{instruction}})
    no_notes: str

    def __post_init__(self) -> None:
        for f in fields(self):
            check_prompt(f.name, getattr(self, f.name))

    @classmethod
    def default(cls) -> PromptSet:
        return cls(**{f.name: _read_template(f.name) for f in fields(cls)})

    def with_overrides(self, overrides: Mapping[str, str] | None = None, **kw: str) -> PromptSet:
        changes = {**(overrides or {}), **kw}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise WiMInputError(f"unknown prompt name(s) {sorted(unknown)}; known: {[f.name for f in fields(self)]}")
        return replace(self, **changes)

    def margin_instruction_for(self, *, inline: bool, scope: str) -> str:
        """The margin instruction for a classification style (`inline`: YES#/NO# prefix) and a `margin_scope`."""
        if scope == "segment":
            return self.margin_instruction_inline_segment if inline else self.margin_instruction_segment
        return self.margin_instruction_inline if inline else self.margin_instruction

    def as_dict(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ChatFrame:
    """The chat template rendered around one user message: `prefix + content + suffix`."""

    prefix: str
    suffix: str
    native: bool  # False when the tokenizer has no chat template and the plain format is used

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, allow_plain: bool = True) -> ChatFrame:
        if not getattr(tokenizer, "chat_template", None):
            if not allow_plain:
                raise WiMInputError(
                    f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; load an instruct "
                    "model, set tokenizer.chat_template, or allow the plain 'User:/Assistant:' format."
                )
            warnings.warn("tokenizer has no chat template; using the plain 'User:/Assistant:' format", stacklevel=3)
            return cls(PLAIN_PREFIX, PLAIN_SUFFIX, native=False)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise WiMInputError("the chat template does not place the user message exactly once; cannot frame WiM.")
        prefix, suffix = rendered.split(_SENTINEL)
        return cls(prefix, suffix, native=True)

    def user_turn_ids(self, backend: Any, content: str) -> list[int]:
        """Token ids of one whole user turn: template tokens around `content`, whose special-token strings stay text."""
        return (
            backend.encode_template(self.prefix) + backend.encode_text(content) + backend.encode_template(self.suffix)
        )


def split_at_placeholder(template: str, name: str) -> tuple[str, str]:
    """(`head`, `tail`) of a template around its first `{{name}}`, for prompts whose head is shared between calls.

    Whitespace before the placeholder goes with the tail, so the varying text keeps its leading space (" The…"
    tokenizes like running text) and the head does not end on a lone space token. Without the placeholder the whole
    template is the head."""
    m = re.search(r"\{\{\s*" + re.escape(name) + r"\s*\}\}", template)
    if m is None:
        return template, ""
    head = template[: m.start()].rstrip(" \t")
    return head, template[len(head) :]
