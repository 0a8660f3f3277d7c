"""Turning classifier replies and inline YES#/NO# margins into verdicts, robustly."""

from __future__ import annotations

import re

from .events import Verdict

# Markdown emphasis, quotes, bullets and headings a small model likes to wrap its answer in.
_NOISE = re.compile(r"^[\s*_`#>\"'“”‘’\-•:\[\](){}.]+")
_ANSWER = re.compile(r"^(?:answer\s*[:\-]\s*|verdict\s*[:\-]\s*)?(yes|no|not\s+relevant|irrelevant|relevant)\b", re.I)
_INLINE = re.compile(r"^[\s*_`>\"'“”]*(yes|no)[\s*_`]*#[\s*_`]*", re.I)


def parse_verdict(reply: str) -> Verdict:
    """Verdict of a classifier reply such as "YES", "**No.**", "Answer: yes, because…"; else "unknown"."""
    text = _NOISE.sub("", reply.strip())
    m = _ANSWER.match(text)
    if not m:
        return "unknown"
    word = re.sub(r"\s+", " ", m.group(1).lower())
    return "yes" if word in ("yes", "relevant") else "no"


def split_inline(margin: str) -> tuple[Verdict, str]:
    """Split an inline-mode margin "YES# facts…" into its verdict and its text.

    The strict form is `YES#`/`NO#`; a reply that skips the '#' but starts with a clear yes/no word is accepted
    too. Anything else is "unknown" and keeps its whole text.
    """
    m = _INLINE.match(margin)
    if m:
        return ("yes" if m.group(1).lower() == "yes" else "no"), margin[m.end() :].strip()
    verdict = parse_verdict(margin)
    if verdict == "unknown":
        return verdict, margin.strip()
    rest = _ANSWER.sub("", _NOISE.sub("", margin.strip()), count=1)
    return verdict, _NOISE.sub("", rest).strip()


def verdict_is_settled(reply: str) -> bool:
    """True once more text cannot change `parse_verdict(reply)`: a verdict word followed by a non-word character
    ("NO," / "Yes." / "no\\n"). A bare "No" is not settled: it could still become "Nothing…"."""
    text = _NOISE.sub("", reply.lstrip())
    m = _ANSWER.match(text)
    return m is not None and m.end() < len(text)
