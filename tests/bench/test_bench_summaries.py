"""The summarisation benchmark: known key facts, scoring, one run of every system and the report (tiny model)."""

from __future__ import annotations

import pytest

from benchmarks.runner import load_records
from benchmarks.summaries import SYSTEMS, report, run, score_summary, stated_terms, summary_task
from wim_integrations import WiMConfig


def _count(text: str) -> int:
    return len(text.split())


def test_tasks_plant_each_fact_once_at_spread_depths():
    st = summary_task(_count, 2000, seed=1, n_facts=6)
    assert st == summary_task(_count, 2000, seed=1, n_facts=6)  # deterministic
    assert st != summary_task(_count, 2000, seed=2, n_facts=6)
    text = st.task.context
    depths = [f["depth"] for f in st.facts]
    assert depths == sorted(depths) and depths[0] < 0.1 and depths[-1] > 0.9
    positions = [text.index(f["sentence"]) / len(text) for f in st.facts]
    assert positions == sorted(positions)
    for f, at in zip(st.facts, positions, strict=True):
        assert abs(at - f["depth"]) < 0.1
        for key in (f["surname"], f["town"], f["number"]):
            assert text.count(key) == 1, key  # never in the filler, never twice


def test_scoring_counts_named_facts_and_invented_terms():
    st = summary_task(_count, 1000, seed=0, n_facts=4)
    a, b = st.facts[0], st.facts[2]
    s = score_summary(
        st, f"{a['sentence']} Also {b['surname']} appears. Then Bob Qwerty paid 12 coins. The old miller."
    )
    assert s["recalled"] == [True, False, True, False] and s["recall"] == 0.5
    assert s["number_recall"] == 0.25
    assert s["invented"] == ["12", "Bob", "Qwerty"]  # "Also", "Then", "The" start sentences; the rest is in the text
    assert score_summary(st, "")["recall"] == 0 and score_summary(st, "")["n_invented"] == 0
    assert stated_terms("- Mira went.\n* Ann saw Zed at 4.") == {"Zed", "4"}


def test_one_run_of_every_system_and_the_report(tiny_backends, tmp_path):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("matplotlib")
    b = tiny_backends["llama"]
    st = summary_task(lambda s: len(b.encode_text(s)), 900, seed=0, n_facts=3, budget=8)
    cfg = WiMConfig(segment_tokens=400, margin_max_new_tokens=6, margin_batch_size=64, reuse_document_cache=False)
    out = tmp_path / "s.jsonl"
    run(b, [st], out, cfg, SYSTEMS)
    records = load_records(out)
    assert [r["system"] for r in records] == list(SYSTEMS)
    wim = next(r for r in records if r["system"] == "wim")
    assert len(wim["notes"]) == wim["llm_calls"] - 1 >= 2
    for r in records:
        assert r == {**r, **score_summary(st, r["summary"])} and r["seconds"] > 0
    run(b, [st], out, cfg, SYSTEMS)  # resumes: nothing new
    assert len(load_records(out)) == len(SYSTEMS)
    md = report(out, tmp_path / "img")
    assert "| wim | 1 |" in md and "time / long_context" in md and "WiM time" in md
    assert (tmp_path / "img" / "s-recall-vs-depth.png").stat().st_size > 0
