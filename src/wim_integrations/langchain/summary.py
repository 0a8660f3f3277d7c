"""The summary / analysis input shape of `WiMChain` (reading without a question).

    chain.invoke({"context": docs, "summarize": True})                        # the default summary
    chain.invoke({"context": docs, "summarize": "Summarise in 5 bullet points."})
    chain.invoke({"context": docs, "analyze": "List every obligation and its deadline.", "schema": Obligation})

Optional keys: "note_instruction" (what each note records) and "schema" (a pydantic model each note is validated
against). An `Analysis` object under "question" works too. The output is the summary string, or a `WiMSummary`
with `.with_margins()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..analysis import Analysis
from ..errors import WiMInputError

TASK_KEYS = ("summarize", "analyze")
TASK_OPTIONS = ("schema", "note_instruction")


def analysis_from_input(value: Mapping[str, Any]) -> Analysis | None:
    """The `Analysis` a chain input asks for, or None when it asks none (a question input)."""
    asked = [k for k in TASK_KEYS if value.get(k) not in (None, False)]
    if not asked:
        return None
    if len(asked) > 1:
        raise WiMInputError("WiMChain input has both 'summarize' and 'analyze'; pass one of them.")
    extra = {"schema": value.get("schema"), "note_instruction": value.get("note_instruction")}
    if asked[0] == "summarize":
        task = value["summarize"]
        return Analysis.summary(None if task is True else task, **extra)
    return Analysis.create(value["analyze"], **extra)
