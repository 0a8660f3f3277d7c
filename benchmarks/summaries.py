"""Summaries of long documents whose key facts are known: WiM against long-context and LlamaIndex summarisation.

    python -m benchmarks.summaries run [--lengths 4096] [--seeds 0,1,2] [--model default]
    python -m benchmarks.summaries report [RESULTS] [--img-dir docs/img]

Each document is village filler (`tasks.build_document`) with `n_facts` planted key facts at evenly spread depths:
a person with an invented surname, an invented town and a number ("Mira Velkantis of Zarquo sold 412 barrels of
cider at the autumn fair."). Every fact's surname, town and number occur once in the document and nowhere in the
filler. Scores per summary:

- recall: the share of facts whose surname the summary names (per fact, so recall can be plotted against depth);
  `number_recall`: the share whose number it states;
- invented: distinct numbers and mid-sentence capitalised words in the summary that never occur in the document
  (a count of stated facts that are not in the text; words of the instruction are not counted).

Systems, one backend, greedy, the same summary budget: `wim` (`WiM.summarize`, every note of a document decoded in
one packed batch), `long_context` (the document and the instruction in one prompt), LlamaIndex `refine` and
`tree_summarize` over the same segments (their own default prompts, the instruction as the query). Time is reported
as a ratio to `long_context` on the same document, in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from wim_integrations import WiMConfig
from wim_integrations.analysis import DEFAULT_SUMMARY_INSTRUCTION
from wim_integrations.prompts import render

from .runner import RESULTS_DIR, load_records, machine_facts, slug
from .systems import Reader, run_llamaindex
from .tasks import Task, TokenCounter, build_document, invented_word

SYSTEMS = ("long_context", "wim", "refine", "tree_summarize")
OUT_DIR = RESULTS_DIR / "summaries"

_FIRST = ("Mira", "Tobin", "Anja", "Corvin", "Lysa", "Emeric", "Halvard", "Ottilie", "Bertram", "Sunniva")
_DEEDS = (
    "sold {n} barrels of cider at the autumn fair",
    "repaired {n} fishing boats before the spring storms",
    "planted {n} apple trees along the east road",
    "paid {n} silver crowns for the old mill",
    "counted {n} cranes on the marsh in a single morning",
    "carried {n} sacks of grain across the mountain pass",
    "printed {n} copies of the harbour almanac",
    "won {n} prizes for honey at the county show",
)
# Long-context baseline: WiM's own opening and closing wording, minus the notes.
_TEXT_SUMMARY = "{{opening}}{{text}}\n\n=== END OF TEXT ===\nNow do this for the whole text: {{instruction}}"
_TERM = re.compile(r"\b(?:[A-Z][a-z]+|\d+)\b")


@dataclass(frozen=True)
class SummaryTask:
    task: Task  # context, length, seed; `question` holds the instruction (LlamaIndex's query)
    facts: tuple[dict[str, Any], ...]  # surname, town, number, depth, sentence


def summary_task(count: TokenCounter, length: int, seed: int, n_facts: int = 8, budget: int = 192) -> SummaryTask:
    rng = random.Random(f"summary|{length}|{n_facts}|{seed}")
    facts, planted = [], []
    used: set[str] = set()
    for i in range(n_facts):
        while (surname := invented_word(rng, 3).capitalize()) in used:
            pass
        while (town := invented_word(rng, 2).capitalize()) in used or town == surname:
            pass
        used |= {surname, town}
        number = str(rng.randint(101, 989))
        depth = (i + 0.5) / n_facts
        sentence = f"{rng.choice(_FIRST)} {surname} of {town} {rng.choice(_DEEDS).format(n=number)}."
        facts.append({"surname": surname, "town": town, "number": number, "depth": depth, "sentence": sentence})
        planted.append((depth, sentence))
    text, _ = build_document(rng, count, length, planted)
    task = Task(
        id=f"summary-L{length}-s{seed}",
        kind="summary",
        context=text,
        question=DEFAULT_SUMMARY_INSTRUCTION,
        answers=tuple(f["surname"] for f in facts),
        candidates=(),
        length=length,
        n_tokens=count(text),
        depth=None,
        seed=seed,
        answer_tokens=budget,
    )
    return SummaryTask(task, tuple(facts))


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def stated_terms(text: str) -> set[str]:
    """Numbers and capitalised words that do not start a sentence or list item: what a summary states as facts."""
    terms = set()
    for m in _TERM.finditer(text):
        before = text[: m.start()].rstrip(" \t\"'(")
        if m.group()[0].isupper() and (not before or before[-1] in ".!?:\n*#-0123456789"):
            continue
        terms.add(m.group())
    return terms


def score_summary(st: SummaryTask, summary: str) -> dict[str, Any]:
    said = _words(summary)
    named = [f["surname"].lower() in said for f in st.facts]
    numbers = [f["number"] in said for f in st.facts]
    known = _words(st.task.context) | _words(st.task.question)
    invented = sorted(t for t in stated_terms(summary) if t.lower() not in known)
    return {
        "recalled": named,
        "recall": mean(named),
        "number_recall": mean(numbers),
        "invented": invented,
        "n_invented": len(invented),
    }


# -- systems --------------------------------------------------------------------------------------------------------
def run_system(reader: Reader, st: SummaryTask, system: str) -> dict[str, Any]:
    task = st.task
    t0 = time.perf_counter()
    if system == "long_context":
        body = render(
            _TEXT_SUMMARY, opening=reader.wim.prompts.context_opening, text=task.context, instruction=task.question
        )
        summary, n_out, _ = reader.generate(body, task.answer_tokens)
        return {"summary": summary, "seconds": time.perf_counter() - t0, "generated_tokens": n_out, "llm_calls": 1}
    if system == "wim":
        r = reader.wim.summarize(task.context, answer_max_new_tokens=task.answer_tokens)
        return {
            "summary": r.summary,
            "seconds": time.perf_counter() - t0,
            "generated_tokens": r.tokens.margin_generated + r.tokens.answer_generated,
            "llm_calls": 1 + r.n_segments,
            "notes": [n.text for n in r.notes],
            "timings": r.timings.model_dump(),
        }
    out = run_llamaindex(reader, task, system)
    return {
        "summary": out.answer,
        "seconds": out.seconds,
        "generated_tokens": out.generated_tokens,
        "llm_calls": out.llm_calls,
    }


def run(backend: Any, tasks: Sequence[SummaryTask], out: Path, config: WiMConfig, systems: Sequence[str]) -> None:
    """Append one JSON line per (task, system) that `out` lacks."""
    reader = Reader(backend, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["task_id"], r["system"]) for r in load_records(out) if r.get("model") == backend.name}
    meta = out.with_suffix(".meta.json")
    if not meta.exists():
        meta.write_text(json.dumps({"model": backend.name, "config": config.model_dump(), **machine_facts()}, indent=2))
    with out.open("a", encoding="utf-8") as f:
        for st in tasks:
            for system in systems:
                if (st.task.id, system) in done:
                    continue
                res = run_system(reader, st, system)
                rec = {
                    "task_id": st.task.id,
                    "length": st.task.length,
                    "n_tokens": st.task.n_tokens,
                    "seed": st.task.seed,
                    "system": system,
                    "model": backend.name,
                    "depths": [f["depth"] for f in st.facts],
                    "facts": [f["sentence"] for f in st.facts],
                    **res,
                    **score_summary(st, res["summary"]),
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                rec["seconds"] = round(rec["seconds"], 3)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                print(
                    f"{st.task.id} {system}: recall {rec['recall']:.2f}, invented {rec['n_invented']}, "
                    f"{rec['seconds']:.1f}s",
                    file=sys.stderr,
                )


# -- report ---------------------------------------------------------------------------------------------------------
def summary_table(records: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    """Markdown table per system (means over documents) and the numbers behind it."""
    lc_time = {r["task_id"]: r["seconds"] for r in records if r["system"] == "long_context"}
    stats: dict[str, dict[str, float]] = {}
    for s in [s for s in SYSTEMS if any(r["system"] == s for r in records)]:
        rs = [r for r in records if r["system"] == s]
        ratios = [r["seconds"] / lc_time[r["task_id"]] for r in rs if r["task_id"] in lc_time]
        stats[s] = {
            "docs": len(rs),
            "recall": mean(r["recall"] for r in rs),
            "number_recall": mean(r["number_recall"] for r in rs),
            "invented": mean(r["n_invented"] for r in rs),
            "seconds": mean(r["seconds"] for r in rs),
            "time_ratio": mean(ratios) if ratios else float("nan"),
            "calls": mean(r["llm_calls"] for r in rs),
        }
    lines = [
        "| system | docs | key-fact recall | number recall | invented facts / summary | time (s) | time / long_context "
        "| LLM calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, v in stats.items():
        lines.append(
            f"| {s} | {v['docs']} | {v['recall']:.2f} | {v['number_recall']:.2f} | {v['invented']:.2f} | "
            f"{v['seconds']:.1f} | {v['time_ratio']:.2f}x | {v['calls']:.1f} |"
        )
    return "\n".join(lines), stats


def targets(stats: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, each with its measured numbers and met / missed."""
    if "wim" not in stats or "long_context" not in stats:
        return ["targets need both `wim` and `long_context` results"]
    w, lc = stats["wim"], stats["long_context"]
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED'}: {text}")

    gain = 100 * (w["recall"] - lc["recall"])
    line(
        gain >= 20, f"WiM recall {w['recall']:.2f} vs long_context {lc['recall']:.2f}: {gain:+.0f} points (target +20)"
    )
    for peer in ("refine", "tree_summarize"):
        if peer in stats:
            p = stats[peer]["recall"]
            line(w["recall"] >= p, f"WiM recall {w['recall']:.2f} vs {peer} {p:.2f} (target: at least equal)")
    line(
        w["invented"] <= lc["invented"],
        f"invented facts per summary: WiM {w['invented']:.2f} vs long_context {lc['invented']:.2f} (target: no more)",
    )
    line(w["time_ratio"] <= 1.5, f"WiM time {w['time_ratio']:.2f}x long_context (target <= 1.5x)")
    return out


def plot_recall_by_depth(records: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, s in enumerate(s for s in SYSTEMS if any(r["system"] == s for r in records)):
        by_depth: dict[float, list[bool]] = {}
        for r in (r for r in records if r["system"] == s):
            for d, hit in zip(r["depths"], r["recalled"], strict=True):
                by_depth.setdefault(round(d, 4), []).append(hit)
        xs = sorted(by_depth)
        shift = 0.012 * (i - 1.5)  # equal values stay visible
        ax.plot(xs, [mean(by_depth[x]) + shift for x in xs], marker="osD^"[i], label=s, alpha=0.85)
    model = records[0]["model"] if records else ""
    ax.set_xlabel("depth of the key fact (fraction of the document)")
    ax.set_ylabel("share of summaries naming the fact")
    ax.set_title(f"summary key-fact recall by depth ({model})", fontsize=10)
    ax.set_ylim(-0.08, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, "lines offset slightly so equal values stay visible", fontsize=7, color="gray")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: Path, img_dir: Path) -> str:
    records = load_records(results)
    if not records:
        raise SystemExit(f"{results} holds no results; run `python -m benchmarks.summaries run` first.")
    table, stats = summary_table(records)
    image = plot_recall_by_depth(records, img_dir / f"{results.stem}-recall-vs-depth.png")
    md = "\n".join([table, "", "Targets:", *targets(stats), "", f"![recall vs depth]({image.as_posix()})", ""])
    results.with_suffix(".md").write_text(md, encoding="utf-8")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.summaries", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the summary tasks (resumes from its results file)")
    r.add_argument("--model", default="default", help="local model dir or HF cache name; 'default' = embedded SmolLM2")
    r.add_argument("--lengths", default="4096", help="comma-separated document lengths in tokens")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--facts", type=int, default=8, help="key facts per document")
    r.add_argument("--segment-tokens", type=int, default=1024)
    r.add_argument("--note-tokens", type=int, default=48, help="margin_max_new_tokens of WiM's notes")
    r.add_argument("--summary-tokens", type=int, default=192)
    r.add_argument("--systems", default=",".join(SYSTEMS))
    r.add_argument("--out", type=Path)
    p = sub.add_parser("report", help="table, targets and the recall-vs-depth plot")
    p.add_argument("results", nargs="?", type=Path)
    p.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    args = parser.parse_args(argv)
    if args.command == "report":
        paths = [args.results] if args.results else sorted(OUT_DIR.glob("*.jsonl"))
        for path in paths:
            print(f"### {path.stem}\n\n{report(path, args.img_dir)}")
        return 0
    from .__main__ import _load_backend

    backend = _load_backend(args.model)
    systems = [s for s in args.systems.split(",") if s]
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown system(s) {sorted(unknown)}; known: {list(SYSTEMS)}")
    count = lambda s: len(backend.encode_text(s))  # noqa: E731
    tasks = [
        summary_task(count, int(n), int(seed), args.facts, args.summary_tokens)
        for n in args.lengths.split(",")
        for seed in args.seeds.split(",")
    ]
    config = WiMConfig(
        segment_tokens=args.segment_tokens,
        margin_max_new_tokens=args.note_tokens,
        margin_batch_size=64,  # every note of a document in one packed batch
        reuse_document_cache=False,
    )
    out = args.out or OUT_DIR / f"summaries-{slug(backend.name)}.jsonl"
    run(backend, tasks, out, config, systems)
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
