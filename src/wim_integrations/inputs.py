"""Checking user input at the boundary: text, documents and their metadata, refused with the fix before any model
work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from .errors import WiMInputError


def check_text(value: object, what: str) -> str:
    """`value` if it is a str that encodes as UTF-8; else a `WiMInputError` naming `what`, the problem and the fix.

    Lone surrogates (from `errors="surrogateescape"` decoding or broken JSON escapes) are not text: tokenizers reject
    them with an unrelated TypeError, so they are refused here, at the input boundary, before any model work."""
    if not isinstance(value, str):
        raise WiMInputError(f"{what} must be a string, not {type(value).__name__}; convert it to text first.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WiMInputError(
            f"{what} contains a lone surrogate {value[exc.start]!r} at character {exc.start}, which is not valid "
            "Unicode (bytes decoded with errors='surrogateescape'?); decode the bytes with their real encoding, or "
            "with errors='replace'."
        ) from None
    return value


@dataclass(frozen=True)
class InputDocument:
    """One document of a multi-document context; `id` and `metadata` travel to the events."""

    text: str
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_text(self.text, "document text")
        if self.id is not None and not isinstance(self.id, str):
            raise WiMInputError(f"document id must be a string or None, not {type(self.id).__name__}.")
        if self.id is not None:
            check_text(self.id, "document id")
        if not isinstance(self.metadata, Mapping):
            raise WiMInputError(
                f"document metadata must be a mapping (dict), not {type(self.metadata).__name__}; "
                "wrap the value, e.g. metadata={'tags': [...]}."
            )
        check_metadata(self.metadata)


def check_metadata(metadata: Mapping[str, Any]) -> None:
    """Metadata travels into the events and the result, so it must be writable as JSON (and HTML): refused here, not
    when the result is written after a whole run."""
    try:
        pydantic_core.to_json(metadata)
    except ValueError as exc:  # PydanticSerializationError: a lone surrogate, bytes, a cycle, an unknown type
        detail = str(exc).removeprefix("Error serializing to JSON: ")
        raise WiMInputError(
            f"document metadata cannot be written out as JSON ({detail[:200]}); keep to strings (valid Unicode), "
            "numbers, booleans, None, lists and dicts, e.g. convert objects with str()."
        ) from None


def as_documents(context: object) -> tuple[InputDocument, ...]:
    """Normalize a string or a list of strings / `InputDocument` / {"text", "id", "metadata"} mappings."""
    if isinstance(context, str):
        return (InputDocument(check_text(context, "context")),)
    if isinstance(context, InputDocument):
        return (context,)
    if isinstance(context, Sequence) and not isinstance(context, (bytes, bytearray)):
        docs = []
        for i, item in enumerate(context):
            if isinstance(item, str):
                docs.append(_document(i, item))
            elif isinstance(item, InputDocument):
                docs.append(item)
            elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
                docs.append(_document(i, item["text"], item.get("id"), item.get("metadata") or {}))
            else:
                raise WiMInputError(
                    f"context item {i} is a {type(item).__name__}; pass str, InputDocument or a mapping with a "
                    "'text' string (framework documents are converted by the LangChain/LlamaIndex adapters)."
                )
        if not docs:
            raise WiMInputError("context is an empty list; pass at least one non-empty document.")
        return tuple(docs)
    raise WiMInputError(
        f"context must be a string or a list of documents, not {type(context).__name__}; "
        "decode bytes and convert other objects to text first."
    )


def _document(i: int, text: str, doc_id: object = None, metadata: object = None) -> InputDocument:
    try:
        return InputDocument(text, doc_id, {} if metadata is None else metadata)  # type: ignore[arg-type]
    except WiMInputError as exc:
        raise WiMInputError(f"context item {i}: {exc}") from None
