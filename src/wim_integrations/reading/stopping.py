"""When a margin has said what its segment holds: stop rules applied while it is decoded.

A margin runs until the model's stop token or `margin_max_new_tokens`, and with a rule also until:

- "sentence": its first sentence ends: the text so far ends with ".", "!" or "?" (a closing quote or bracket may
  follow) not right after a digit (so "1." of a list, or a code such as "4921." that a sentence may go on after, does
  not end it), or a line break follows some text;
- "line": a line break follows some text;
- "eos": no rule, only the stop token and the budget.

The rule reads the decoded text of the margin's own tokens, so it is the same on every backend. The token that ends the
sentence is kept; nothing is cut from the margin afterwards (its tokens, text and scores agree).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..config import MarginStop

StopRule = Callable[[Sequence[int]], bool]

_SENTENCE_END = re.compile(r"(?<![\d\s])[.!?][\"'”’)\]]*$")


def _line_ended(text: str) -> bool:
    return "\n" in text.lstrip()


def _sentence_ended(text: str) -> bool:
    return _line_ended(text) or _SENTENCE_END.search(text.rstrip(" ")) is not None


def stop_rule(kind: MarginStop, decode: Callable[[Sequence[int]], str]) -> StopRule | None:
    """A predicate on a margin's tokens so far (True: it is complete), or None for "eos"."""
    if kind == "eos":
        return None
    ended = _sentence_ended if kind == "sentence" else _line_ended
    return lambda ids: ended(decode(ids))
