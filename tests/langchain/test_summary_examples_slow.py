"""The summary examples, end to end on the embedded SmolLM2 (slow)."""

from __future__ import annotations

import pytest
from test_langchain_examples import run_example


@pytest.mark.slow
def test_langchain_summarize_example():
    out = run_example("langchain_summarize.py")
    notes = [line for line in out.splitlines() if line.startswith("Note ")]
    assert len(notes) >= 3 and all("<- harbor_report[" in n for n in notes)
    summary = next(line for line in out.splitlines() if line.startswith("Summary: "))
    # Non-empty only: SmolLM2-135M's summaries are often a few words (its key-fact recall is measured in
    # docs/benchmarks.md, not asserted here).
    assert summary.strip() != "Summary:"
    assert next(line for line in out.splitlines() if line.startswith("Names: ")).strip() != "Names:"
