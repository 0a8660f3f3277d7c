"""The benchmark runner end to end on a tiny random model: all systems, resumable results, report and plots."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main
from benchmarks.report import write_report
from benchmarks.runner import Preset, build_tasks, load_records, run_benchmark
from benchmarks.systems import SYSTEMS, Reader, run_margins_only, run_rag_classifier
from wim_integrations import WiMConfig, WiMResult
from wim_integrations.events import Margin

PRESET = Preset(
    lengths=(300,), depths=(0.5,), seeds=(0,), segment_tokens=160, margin_max_new_tokens=6, classifier_max_new_tokens=2
)


@pytest.fixture(scope="module")
def tasks(tiny_backends):
    return build_tasks(tiny_backends["llama"], PRESET, ["needle", "cwe"])


def test_run_resume_and_report(tiny_backends, tasks, tmp_path, monkeypatch):
    backend = tiny_backends["llama"]
    out = tmp_path / "tiny.jsonl"
    records = run_benchmark(backend, tasks, out, preset_name="tiny", preset=PRESET, progress=False)

    assert [t.kind for t in tasks] == ["needle", "cwe"]
    assert len(records) == 2 * len(SYSTEMS) == len(load_records(out))
    assert {(r["task_id"], r["system"]) for r in records} == {(t.id, s) for t in tasks for s in SYSTEMS}
    for r in records:
        assert 0.0 <= r["score"] <= 1.0 and r["seconds"] > 0 and r["llm_calls"] >= 1
    by = {(r["task_id"], r["system"]): r for r in records}
    for t in tasks:
        wim = by[(t.id, "wim")]
        n_seg = wim["detail"]["n_segments"]
        assert n_seg >= 2  # the documents span several segments
        assert by[(t.id, "long_context")]["llm_calls"] == 1
        assert by[(t.id, "refine")]["llm_calls"] >= n_seg  # one call per segment at least
        assert by[(t.id, "tree_summarize")]["llm_calls"] >= n_seg + 1  # per-segment summaries, then the combination
        # Ablations reuse the WiM reading pass, so they cost at least its reading time.
        reading = sum(wim["detail"]["wim_result"]["timings"][k] for k in ("prefill_seconds", "margin_seconds"))
        assert by[(t.id, "rag_classifier")]["seconds"] >= reading

    # Resuming: nothing is recomputed; a removed line is recomputed alone, from the stored WiM margins.
    lines = out.read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["system"] != "rag_classifier"]
    out.write_text("\n".join(kept) + "\n")

    def no_wim(*_a, **_k):
        raise AssertionError("WiM must not be rerun when its result is stored")

    monkeypatch.setattr(Reader, "run_wim", no_wim)
    again = run_benchmark(backend, tasks, out, preset_name="tiny", preset=PRESET, progress=False)
    assert len(load_records(out)) == len(lines)
    assert [(r["task_id"], r["system"]) for r in again] == [(r["task_id"], r["system"]) for r in records]
    # Greedy decoding: the recomputed runs give the same answers.
    assert {r["task_id"]: r["answer"] for r in again if r["system"] == "rag_classifier"} == {
        r["task_id"]: r["answer"] for r in records if r["system"] == "rag_classifier"
    }

    md = write_report(out, tmp_path / "img")
    for s in SYSTEMS:
        assert f"| `{s}` |" in md
    assert "needle 300" in md and "cwe 300" in md and "time / long_context" in md
    pngs = sorted((tmp_path / "img").glob("*.png"))
    assert [p.name for p in pngs] == [
        f"tiny-{n}.png" for n in ("accuracy-vs-depth", "accuracy-vs-length", "time-vs-length")
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "tiny.md").read_text() == md

    # The CLI writes the same report.
    assert main(["report", str(out), "--img-dir", str(tmp_path / "img2"), "--md", str(tmp_path / "cli.md")]) == 0
    assert (tmp_path / "cli.md").read_text() == md.replace(str(tmp_path / "img"), str(tmp_path / "img2"))
    assert len(list((tmp_path / "img2").glob("*.png"))) == 3


def _margin(i: int, text: str, relevant: bool, span: tuple[int, int]) -> Margin:
    return Margin(
        segment_index=i,
        text=text,
        relevant=relevant,
        verdict="yes" if relevant else "no",
        char_span=span,
        token_span=(0, 1),
        n_tokens=3,
        seconds=0.1,
    )


def test_ablations_answer_from_relevant_margins_or_segments_only(tiny_backends, tasks, monkeypatch):
    task = tasks[0]
    reader = Reader(tiny_backends["llama"], WiMConfig(segment_tokens=PRESET.segment_tokens))
    segments = reader.wim.plan(task.context, task.question).context.segments
    assert len(segments) >= 2
    spans = [(s.start_char, s.end_char) for s in segments]
    margins = [_margin(0, "NOTE-KEEP", True, spans[0]), _margin(1, "NOTE-DROP", False, spans[1])]
    reader.wim_results[task.id] = WiMResult(
        answer="x", question=task.question, margins=margins, n_segments=len(segments), segments_read=len(segments)
    )
    bodies: list[str] = []
    monkeypatch.setattr(reader, "generate", lambda body, n: (bodies.append(body), ("ans", 1, 1))[1])

    assert run_margins_only(reader, task).answer == "ans"
    assert "NOTE-KEEP" in bodies[-1] and "NOTE-DROP" not in bodies[-1] and task.question in bodies[-1]
    assert segments[1].text.strip()[:40] not in bodies[-1]  # no context, only notes

    run_rag_classifier(reader, task)
    assert segments[0].text.strip() in bodies[-1] and segments[1].text.strip() not in bodies[-1]
    assert "NOTE-KEEP" not in bodies[-1] and task.question in bodies[-1]
