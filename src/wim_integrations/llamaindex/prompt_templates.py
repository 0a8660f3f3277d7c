"""The WiM prompts as LlamaIndex `PromptTemplate`s, and back.

The core writes placeholders as `{{name}}`; LlamaIndex templates write `{name}` and keep any other brace as literal
text (its SafeFormatter). Converting follows those rules both ways, so `{"json": 1}` in a prompt stays text.
"""

from __future__ import annotations

import re
from typing import Any

from llama_index.core.prompts import BasePromptTemplate, PromptTemplate

from ..errors import WiMInputError
from ..prompts import PromptSet

# The placeholders each prompt may use; the core fills exactly these.
PROMPT_VARIABLES: dict[str, frozenset[str]] = {
    "context_opening": frozenset(),
    "margin_instruction": frozenset({"question"}),
    "margin_instruction_inline": frozenset({"question"}),
    "margin_instruction_segment": frozenset({"question"}),
    "margin_instruction_inline_segment": frozenset({"question"}),
    "classification": frozenset({"question", "margin"}),
    "final_answer": frozenset({"margins", "question"}),
    "no_margins": frozenset(),
}

_CORE_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# What LlamaIndex's PromptTemplate treats as a variable (its SafeFormatter); any other brace is literal text.
_LI_PLACEHOLDER = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\}")


def to_prompt_template(text: str) -> PromptTemplate:
    return PromptTemplate(_CORE_PLACEHOLDER.sub(r"{\1}", text))


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

    def convert(m: re.Match[str]) -> str:
        field = m.group(1)
        if field not in PROMPT_VARIABLES[name]:
            allowed = ", ".join("{" + v + "}" for v in sorted(PROMPT_VARIABLES[name])) or "none"
            raise WiMInputError(
                f"prompt {name!r} uses placeholder {{{field}}}, which WiM cannot fill; allowed: {allowed}."
            )
        return "{{" + field + "}}"

    return _LI_PLACEHOLDER.sub(convert, text)


def prompt_templates(prompts: PromptSet) -> dict[str, PromptTemplate]:
    return {k: to_prompt_template(v) for k, v in prompts.as_dict().items()}


def updated_prompt_set(prompts: PromptSet, updates: dict[str, Any]) -> PromptSet:
    return prompts.with_overrides({k: from_prompt_template(k, v) for k, v in updates.items()})
