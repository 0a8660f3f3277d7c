"""Reading without a question: summaries and document analyses.

The reading loop is the question loop with other prompts: after each segment the model writes a *note* under the
note instruction (the margin prompt), every note is kept (classification "none"), and the final pass carries out the
task instruction over the whole context plus the notes, in document order.

    wim.summarize(text)                                         # WiMSummary: .summary, .notes
    wim.analyze(text, "List every obligation and its deadline", schema=Obligation)
    wim.stream(text, Analysis.summary())                        # the usual events, answer_now() / cancel()
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .errors import WiMInputError
from .events import Margin, WiMResult
from .inputs import check_text

DEFAULT_SUMMARY_INSTRUCTION = (
    "Write a summary of the whole text: its key facts, names, numbers and events, in the order they appear."
)
DEFAULT_NOTE_INSTRUCTION = "Note the key facts, names, numbers and events of this part."


def _instruction(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise WiMInputError(f"{what} must be a string, not {type(value).__name__}.")
    check_text(value, what)  # lone surrogates: refused here, not by the tokenizer after the model has loaded
    if not value.strip():
        raise WiMInputError(f"{what} is empty; say what WiM should write (or leave it out to use the default).")
    return value.strip()


@dataclass(frozen=True)
class Analysis:
    """A query-free reading task: what each note records, and what the final pass writes from the text + notes.

    Pass it where a question goes (`WiM.stream/run/arun`, `WiMChain`, `WiMSynthesizer`) or use `WiM.summarize` /
    `WiM.analyze`. With `schema` (a pydantic model class) each note is asked for as one JSON object of that shape
    and validated; a note that does not validate keeps its text and carries `parse_error`.
    """

    instruction: str
    note_instruction: str
    schema: type[BaseModel] | None = None

    @classmethod
    def create(cls, instruction: object, *, schema: object = None, note_instruction: object = None) -> Analysis:
        """A validated analysis; notes are written under `note_instruction` (default: the instruction itself)."""
        task = _instruction(instruction, "instruction")
        note = task if note_instruction is None else _instruction(note_instruction, "note_instruction")
        if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
            raise WiMInputError(
                f"schema must be a pydantic model class (class Note(BaseModel): ...), not {schema!r}; "
                "pass the class itself, not an instance or a dict."
            )
        return cls(task, note, schema)

    @classmethod
    def summary(cls, instruction: object = None, *, schema: object = None, note_instruction: object = None) -> Analysis:
        """A summary: notes of each part's key facts, names, numbers and events; then `instruction` (or a default)."""
        return cls.create(
            DEFAULT_SUMMARY_INSTRUCTION if instruction is None else instruction,
            schema=schema,
            note_instruction=DEFAULT_NOTE_INSTRUCTION if note_instruction is None else note_instruction,
        )

    @property
    def schema_name(self) -> str | None:
        return self.schema.__name__ if self.schema else None

    def note_skeleton(self) -> str:
        """The JSON shape a note must take under `schema` (field names with their JSON types), or ""."""
        if self.schema is None:
            return ""
        props = self.schema.model_json_schema().get("properties", {})
        return json.dumps({name: f"<{p.get('type', 'value')}>" for name, p in props.items()})

    def format_text(self) -> str:
        """The `{{format}}` part of the note instruction."""
        if self.schema is None:
            return ""
        return f"\nWrite the note as one JSON object of this form, and nothing else: {self.note_skeleton()}"

    def parse(self, note: str) -> tuple[dict[str, Any] | None, str | None]:
        """(validated data, None) or (None, why it failed) for one note under `schema`; (None, None) without one."""
        if self.schema is None:
            return None, None
        start, end = note.find("{"), note.rfind("}")
        if start < 0 or end < start:
            return None, "no JSON object in the note"
        try:
            return self.schema.model_validate_json(note[start : end + 1]).model_dump(mode="json"), None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'note'}: {e['msg']}" for e in exc.errors())
            return None, f"does not match {self.schema.__name__}: {problems}"


class WiMSummary(WiMResult):
    """The result of a summary or analysis: a `WiMResult` whose `answer` is the summary/report and whose margins are
    the notes (same shape, so anything that renders margins renders notes). `question` is empty."""

    instruction: str
    schema_name: str | None = Field(None, description="the pydantic model the notes were validated against")

    @property
    def summary(self) -> str:
        return self.answer

    @property
    def notes(self) -> list[Margin]:
        return self.margins

    @property
    def invalid_notes(self) -> list[Margin]:
        """Notes that did not validate against the schema (their text is kept and was used)."""
        return [m for m in self.margins if m.parse_error is not None]
