"""The medium preset on the embedded SmolLM2's own tokenizer: 4-6k-token documents in 5-6 segments of the default
size, every planted fact inside the window. Plans only (tokenize and segment), no forward pass."""

from __future__ import annotations

import pytest

from benchmarks.relevance import margin_truth
from benchmarks.runner import PRESETS, build_tasks

pytestmark = pytest.mark.slow


def test_medium_tasks_span_five_to_six_default_segments(default_wim):
    preset = PRESETS["medium"]
    tasks = build_tasks(default_wim.backend, preset)
    assert len(tasks) == 12
    for task in tasks:
        assert 4000 <= task.n_tokens <= 6000, task.id
        plan = default_wim.plan(task.context, task.question, preset.wim_config())
        assert plan.segment_tokens == 1024 and 5 <= plan.n_segments <= 6, (task.id, plan.n_segments)
        truths = [margin_truth(task, (s.start_char, s.end_char)) for s in plan.context.segments]
        # Every needed fact lands in some segment, and some segments hold none (precision can be measured).
        assert any(truths) and not all(truths), (task.id, truths)
