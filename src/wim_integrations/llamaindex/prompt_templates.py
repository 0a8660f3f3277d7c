"""The WiM prompts as LlamaIndex `PromptTemplate`s, and back.

The core writes placeholders as `{{name}}` and fills them in one pass; LlamaIndex templates use `{name}` with
literal braces doubled. Converting both ways keeps user text with braces intact.
"""

from __future__ import annotations

import re
from string import Formatter
from typing import Any

from llama_index.core.prompts import BasePromptTemplate, PromptTemplate

from ..errors import WiMInputError
from ..prompts import PromptSet

# The placeholders each prompt may use; the core fills exactly these.
PROMPT_VARIABLES: dict[str, frozenset[str]] = {
    "context_opening": frozenset(),
    "margin_instruction": frozenset({"question"}),
    "margin_instruction_inline": frozenset({"question"}),
    "classification": frozenset({"question", "margin"}),
    "final_answer": frozenset({"margins", "question"}),
    "no_margins": frozenset(),
}

_CORE_PLACEHOLDER = re.compile(r"\{\{\{\{\s*(\w+)\s*\}\}\}\}")  # `{{name}}` after brace escaping


def to_prompt_template(text: str) -> PromptTemplate:
    escaped = text.replace("{", "{{").replace("}", "}}")
    return PromptTemplate(_CORE_PLACEHOLDER.sub(r"{\1}", escaped))


def from_prompt_template(name: str, template: BasePromptTemplate | str) -> str:
    """Core text of a LlamaIndex template for prompt `name`; unknown placeholders are an error, not dropped."""
    if name not in PROMPT_VARIABLES:
        raise WiMInputError(f"unknown WiM prompt {name!r}; known: {sorted(PROMPT_VARIABLES)}")
    if isinstance(template, str):
        text = template
    elif isinstance(template, PromptTemplate):
        if template.kwargs or template.function_mappings or template.template_var_mappings:
            raise WiMInputError(
                f"prompt {name!r}: partial variables, function or variable mappings are not supported; "
                "pass a plain PromptTemplate whose placeholders are among "
                f"{sorted(PROMPT_VARIABLES[name]) or 'none'}."
            )
        text = template.template
    else:
        raise WiMInputError(
            f"prompt {name!r} must be a PromptTemplate or a string, not {type(template).__name__} "
            "(WiM's prompts are single user-message texts)."
        )
    parts: list[str] = []
    try:
        parsed: list[tuple[str, Any, Any, Any]] = list(Formatter().parse(text))
    except ValueError as exc:
        raise WiMInputError(
            f"prompt {name!r} is not a valid template ({exc}); double literal braces: {{{{ }}}}."
        ) from exc
    for literal, field, spec, conversion in parsed:
        parts.append(literal)
        if field is None:
            continue
        if field not in PROMPT_VARIABLES[name] or spec or conversion:
            allowed = ", ".join("{" + v + "}" for v in sorted(PROMPT_VARIABLES[name])) or "none"
            raise WiMInputError(
                f"prompt {name!r} uses placeholder {{{field}}}, which WiM cannot fill; allowed: {allowed} "
                "(write literal braces doubled: {{ and }})."
            )
        parts.append("{{" + field + "}}")
    return "".join(parts)


def prompt_templates(prompts: PromptSet) -> dict[str, PromptTemplate]:
    return {k: to_prompt_template(v) for k, v in prompts.as_dict().items()}


def updated_prompt_set(prompts: PromptSet, updates: dict[str, Any]) -> PromptSet:
    return prompts.with_overrides({k: from_prompt_template(k, v) for k, v in updates.items()})
