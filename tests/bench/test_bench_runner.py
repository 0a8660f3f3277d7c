"""The benchmark runner end to end on a tiny random model: all systems, resumable results, report and plots."""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main
from benchmarks.report import write_report
from benchmarks.runner import Preset, annotate_results, build_tasks, load_records, run_benchmark
from benchmarks.systems import SYSTEMS, Reader, run_margins_only, run_rag_classifier
from benchmarks.variants import parse_system
from wim_integrations import WiMConfig, WiMResult
from wim_integrations.events import Margin

PRESET = Preset(
    lengths=(300,), depths=(0.5,), seeds=(0,), segment_tokens=160, margin_max_new_tokens=6, classifier_max_new_tokens=2
)


@pytest.fixture(scope="module")
def tasks(tiny_backends):
    return build_tasks(tiny_backends["llama"], PRESET, ["needle", "cwe"])


INLINE = "wim[classification=inline]"
PMI = "wim[classification=pmi,relevance_threshold=0.0]"
VARIANTS = [
    INLINE,
    "wim_margins_only[classification=inline]",
    "wim[classification=none,margin_max_new_tokens=4]",
    PMI,
]
MARGIN_KEYS = {"segment", "char_span", "text", "verdict", "relevant", "score", "n_tokens", "truth", "hallucinated"}


def test_run_resume_and_report(tiny_backends, tasks, tmp_path, monkeypatch):
    backend = tiny_backends["llama"]
    out = tmp_path / "tiny.jsonl"
    systems = [*SYSTEMS, *VARIANTS]
    records = run_benchmark(backend, tasks, out, preset_name="tiny", preset=PRESET, systems=systems, progress=False)

    assert [t.kind for t in tasks] == ["needle", "cwe"]
    assert len(records) == 2 * len(systems) == len(load_records(out))
    assert {(r["task_id"], r["system"]) for r in records} == {(t.id, s) for t in tasks for s in systems}
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

        # Each WiM variant reads with its own settings and records every margin with its ground truth.
        inline, unjudged = by[(t.id, INLINE)], by[(t.id, VARIANTS[2])]
        assert inline["base_system"] == "wim" and inline["wim_overrides"] == {"classification": "inline"}
        assert unjudged["wim_overrides"] == {"classification": "none", "margin_max_new_tokens": 4}
        for rec in (wim, inline, unjudged):
            margins = rec["detail"]["margins"]
            assert len(margins) == n_seg and all(set(m) >= MARGIN_KEYS for m in margins)
            truths = [m["truth"] for m in margins]
            if t.kind == "cwe":
                assert truths == [None] * n_seg  # no segment-local fact
            else:  # exactly the segment(s) whose span holds the planted fact
                (fact,) = t.facts
                assert truths == [
                    m["char_span"][0] < fact.start_char + len(fact.text) and fact.start_char < m["char_span"][1]
                    for m in margins
                ]
                assert any(truths)
        assert {m["verdict"] for m in wim["detail"]["margins"]} <= {"yes", "no", "unknown"}
        assert {m["verdict"] for m in unjudged["detail"]["margins"]} == {"unclassified"}
        assert all(m["relevant"] and m["n_tokens"] <= 4 for m in unjudged["detail"]["margins"])
        assert all(m["n_tokens"] <= PRESET.margin_max_new_tokens for m in wim["detail"]["margins"])
        # A score-based variant records every margin's score; kept exactly when it reaches the threshold.
        scored = by[(t.id, PMI)]["detail"]["margins"]
        assert all(isinstance(m["score"], float) for m in scored)
        assert [m["relevant"] for m in scored] == [m["score"] >= 0.0 for m in scored]
        assert all(m["score"] is None for m in inline["detail"]["margins"])  # a parsed verdict has no score
        # plain `wim` is the engine's default mode: scored or not
        assert all((m["score"] is not None) == WiMConfig().scored for m in wim["detail"]["margins"])
        # The inline ablation answers from the inline variant's read, not the default one's.
        ablation = by[(t.id, "wim_margins_only[classification=inline]")]
        assert ablation["detail"]["reads_with"] == INLINE
        assert ablation["detail"]["n_relevant"] == inline["detail"]["n_relevant"]

    # Resuming: nothing is recomputed; a removed line is recomputed alone, from the stored WiM margins.
    lines = out.read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln)["system"] != "rag_classifier"]
    out.write_text("\n".join(kept) + "\n")

    def no_wim(*_a, **_k):
        raise AssertionError("WiM must not be rerun when its result is stored")

    monkeypatch.setattr(Reader, "run_wim", no_wim)
    again = run_benchmark(backend, tasks, out, preset_name="tiny", preset=PRESET, systems=systems, progress=False)
    assert len(load_records(out)) == len(lines)
    assert [(r["task_id"], r["system"]) for r in again] == [(r["task_id"], r["system"]) for r in records]
    # Greedy decoding: the recomputed runs give the same answers.
    assert {r["task_id"]: r["answer"] for r in again if r["system"] == "rag_classifier"} == {
        r["task_id"]: r["answer"] for r in records if r["system"] == "rag_classifier"
    }

    md = write_report(out, tmp_path / "img")
    for s in systems:
        assert f"| `{s}` |" in md
    assert "needle 300" in md and "cwe 300" in md and "time / long_context" in md
    # The margin relevance table: one row per WiM variant (not the ablations), margins of the needle task only.
    relevance = md.split("#### Margin relevance")[1]
    rows = [ln for ln in relevance.splitlines() if ln.startswith("| `")]
    n_needle = by[(tasks[0].id, "wim")]["detail"]["n_segments"]
    names = ["wim", INLINE, VARIANTS[2], PMI]
    assert [r.split(" | ")[0] for r in rows[:4]] == [f"| `{n}`" for n in names]
    assert all(r.split(" | ")[1] == str(n_needle) for r in rows[:4])
    aucs = [r.split(" | ")[7] for r in rows[:4]]
    assert aucs[1:3] == ["–"] * 2 and float(aucs[3]) >= 0.0  # parsed verdicts have no AUC, scores do
    assert (aucs[0] != "–") == WiMConfig().scored
    pngs = sorted((tmp_path / "img").glob("*.png"))
    assert [p.name for p in pngs] == [
        f"tiny-{n}.png" for n in ("accuracy-vs-depth", "accuracy-vs-length", "margin-relevance", "time-vs-length")
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (tmp_path / "tiny.md").read_text() == md

    # The CLI writes the same report.
    assert main(["report", str(out), "--img-dir", str(tmp_path / "img2"), "--md", str(tmp_path / "cli.md")]) == 0
    assert (tmp_path / "cli.md").read_text() == md.replace(str(tmp_path / "img"), str(tmp_path / "img2"))
    assert len(list((tmp_path / "img2").glob("*.png"))) == 4

    # Results recorded without margin labels get them back from the regenerated tasks, identical to a fresh run's.
    stripped = []
    for rec in load_records(out):
        rec.get("detail", {}).pop("margins", None)
        rec.pop("facts", None)
        stripped.append(json.dumps(rec))
    out.write_text("\n".join(stripped) + "\n")
    assert "No margin ground truth" in write_report(out, tmp_path / "img3")
    assert annotate_results(out, backend) == 2 * 4  # 2 tasks x 4 WiM variants
    relabelled = {(r["task_id"], r["system"]): r for r in load_records(out)}
    for key, rec in by.items():
        assert relabelled[key].get("detail", {}).get("margins") == rec["detail"].get("margins")
        assert relabelled[key].get("facts", rec["facts"]) == rec["facts"]
    assert write_report(out, tmp_path / "img") == md


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
    reader.wim_results[("wim", task.id)] = WiMResult(
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


def test_ablation_variant_answers_from_its_own_wim_variant(tiny_backends, tasks, monkeypatch):
    task = tasks[0]
    reader = Reader(tiny_backends["llama"], WiMConfig(segment_tokens=PRESET.segment_tokens))
    spans = [(s.start_char, s.end_char) for s in reader.wim.plan(task.context, task.question).context.segments]
    for variant, note in (("wim", "NOTE-DEFAULT"), (INLINE, "NOTE-INLINE")):
        reader.wim_results[(variant, task.id)] = WiMResult(
            answer="x",
            question=task.question,
            margins=[_margin(0, note, True, spans[0])],
            n_segments=2,
            segments_read=2,
        )
    bodies: list[str] = []
    monkeypatch.setattr(reader, "generate", lambda body, n: (bodies.append(body), ("ans", 1, 1))[1])
    monkeypatch.setattr(Reader, "run_wim", lambda *_a: pytest.fail("the stored reads must be reused"))

    out = run_margins_only(reader, task, parse_system("wim_margins_only[classification=inline]", reader.config))
    assert "NOTE-INLINE" in bodies[-1] and "NOTE-DEFAULT" not in bodies[-1]
    assert out.detail["reads_with"] == INLINE
    run_margins_only(reader, task)
    assert "NOTE-DEFAULT" in bodies[-1] and "NOTE-INLINE" not in bodies[-1]


def test_variants_are_planned_before_any_forward_pass(tiny_backends, tasks, tmp_path, monkeypatch):
    from wim_integrations.errors import WiMInputError

    backend = tiny_backends["llama"]
    monkeypatch.setattr(backend, "generate", lambda *_a, **_k: pytest.fail("no generation before the checks"))
    out = tmp_path / "r.jsonl"
    with pytest.raises(WiMInputError, match="classification='auxiliary' needs a classifier model"):
        run_benchmark(
            backend,
            tasks,
            out,
            preset_name="t",
            preset=PRESET,
            systems=["long_context", "wim[classification=auxiliary]"],
        )
    with pytest.raises(WiMInputError, match="segment_tokens=8 is smaller than the margin instruction"):
        run_benchmark(
            backend, tasks, out, preset_name="t", preset=PRESET, systems=["wim", "rag_classifier[segment_tokens=8]"]
        )
    assert load_records(out) == []
