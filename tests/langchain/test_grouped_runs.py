"""Margins decoded together (`margin_batch_size` > 1, the default) stream together: one child run per margin, open
at the same time, each receiving only its own tokens."""

from __future__ import annotations

import pytest
from langchain_core.tracers.context import collect_runs
from test_langchain import DOCS, QUESTION

from wim_integrations.langchain import ANSWER_RUN, CLASSIFY_RUN, MARGIN_RUN, WiMChain

GROUP = 2


@pytest.fixture(scope="module")
def grouped(tiny_wim):
    return tiny_wim.with_options(config=tiny_wim.config.with_updates(margin_batch_size=GROUP, margin_stop="eos"))


def test_langchain_child_runs_of_a_group_are_open_together(grouped):
    with collect_runs() as cb:
        out = WiMChain(wim=grouped).with_margins().invoke({"question": QUESTION, "context": DOCS})
    result = out["result"]
    assert result.n_segments > GROUP
    [root] = cb.traced_runs
    runs = [r for r in root.child_runs if r.run_type == "llm"] or root.child_runs
    while len(runs) == 1 and runs[0].child_runs:  # the chain's own runnable layers, down to the WiM step runs
        runs = runs[0].child_runs
    margins = [r for r in runs if r.name == MARGIN_RUN]
    assert [r.name for r in runs].count(CLASSIFY_RUN) == result.n_segments
    assert runs[-1].name == ANSWER_RUN
    assert [r.extra["metadata"]["wim_segment_index"] for r in margins] == list(range(result.n_segments))
    # The first group's runs overlap: each started before any of them ended.
    first = margins[:GROUP]
    assert max(r.start_time for r in first) < min(r.end_time for r in first)
    for run, m in zip(margins, result.margins, strict=True):
        tokens = "".join(e["kwargs"]["token"] for e in run.events if e["name"] == "new_token")
        assert tokens.strip() == m.text  # its own tokens, all of them
        assert run.outputs["generations"][0][0]["text"] == m.text
