"""Markdown tables and PNG plots from a results JSONL file: accuracy and cost per system, and margin relevance
against ground truth per WiM variant."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from statistics import mean
from typing import Any

from .relevance import RelevanceStats, relevance_stats, roc_curve
from .runner import load_records
from .variants import base_of, system_order

BASELINE = "long_context"


def _systems(records: Iterable[dict[str, Any]]) -> list[str]:
    return system_order(r["system"] for r in records)


def wall_seconds(record: dict[str, Any]) -> float:
    """Time the run itself took: an ablation's recorded time includes the WiM reading it reuses, so only its own
    answer call counts here."""
    own = record.get("detail", {}).get("answer_seconds")
    return (
        own
        if own is not None and base_of(record["system"]) in ("wim_margins_only", "rag_classifier")
        else (record["seconds"])
    )


def _time_ratio(records: list[dict[str, Any]], system: str) -> float | None:
    base_time = {r["task_id"]: r["seconds"] for r in records if r["system"] == BASELINE}
    ratios = [
        r["seconds"] / base_time[r["task_id"]] for r in records if r["system"] == system and base_time.get(r["task_id"])
    ]
    return mean(ratios) if ratios else None


def _group(records: Iterable[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def markdown_table(records: list[dict[str, Any]]) -> str:
    """Accuracy per task kind and length, mean wall time, time ratio vs long_context, tokens generated."""
    systems = _systems(records)
    columns = sorted({(r["kind"], r["length"]) for r in records}, key=lambda c: (c[0] != "needle", c[0], c[1]))
    by_col = _group(records, "system", "kind", "length")
    by_sys = _group(records, "system")
    head = ["system", *[f"{k} {n // 1024}k" if n % 1024 == 0 else f"{k} {n}" for k, n in columns]]
    head += ["mean acc", "mean time (s)", f"time / {BASELINE}", "tokens generated", "LLM calls"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in systems:
        rows = by_sys[(s,)]
        cells = [f"`{s}`"]
        for k, n in columns:
            group = by_col.get((s, k, n), [])
            cells.append(f"{mean(r['score'] for r in group):.2f}" if group else "–")
        ratio = _time_ratio(records, s)
        cells += [
            f"{mean(r['score'] for r in rows):.2f}",
            f"{mean(r['seconds'] for r in rows):.1f}",
            f"{ratio:.2f}x" if ratio is not None else "–",
            f"{mean(r['generated_tokens'] for r in rows):.0f}",
            f"{mean(r['llm_calls'] for r in rows):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n_tasks = len({r["task_id"] for r in records})
    lines.append("")
    lines.append(
        f"{n_tasks} tasks; accuracy = mean score (needle/multihop/location: normalized match, 1 or 0; cwe: F1). "
        f"Times are wall-clock seconds per task; the ratio is the mean of per-task ratios to `{BASELINE}`. "
        f"Wall time of all these runs: {sum(map(wall_seconds, records)) / 60:.1f} min (ablations counted by their own "
        "answer call, their reading being the WiM run's)."
    )
    return "\n".join(lines)


def _margins_by_system(records: list[dict[str, Any]], kind: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The WiM variants' margins that carry ground truth, per system (the ablations reuse these margins)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if base_of(r["system"]) != "wim" or (kind is not None and r["kind"] != kind):
            continue
        out[r["system"]] += [m for m in r.get("detail", {}).get("margins", []) if "truth" in m]
    return {s: out[s] for s in system_order(out) if out[s]}


def _num(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.0f} %" if pct else f"{x:.2f}"


def relevance_table(records: list[dict[str, Any]]) -> str:
    """Margin relevance per WiM variant: P/R/F1 of the kept margins against the truth, AUC of the scores, the
    hallucinated-and-kept rate and the time ratio; then F1 (AUC) per task kind."""
    by_sys = _margins_by_system(records)
    if not by_sys:
        return (
            "No margin ground truth in these results (recorded before the benchmark labelled margins); rerun the WiM "
            "systems to get the margin relevance table."
        )
    head = [
        "system",
        "margins",
        "truth +",
        "kept",
        "precision",
        "recall",
        "F1",
        "AUC",
        "hallucinated & kept",
        f"time / {BASELINE}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    stats: dict[str, RelevanceStats] = {}
    for s, margins in by_sys.items():
        st = stats[s] = relevance_stats(margins)
        ratio = _time_ratio(records, s)
        hk = _num(st.hallucinated_kept_rate, pct=True)
        cells = [
            f"`{s}`",
            str(st.n_margins),
            str(st.n_truth),
            str(st.n_kept),
            _num(st.precision),
            _num(st.recall),
            _num(st.f1),
            _num(st.auc),
            f"{hk} ({st.hallucinated_kept})" if st.n_kept else "–",
            f"{ratio:.2f}x" if ratio is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    kinds = sorted({r["kind"] for r in records if base_of(r["system"]) == "wim"} - {"cwe"})
    if kinds:
        lines += [
            "",
            "| system | " + " | ".join(f"{k}: F1 (AUC)" for k in kinds) + " |",
            "|" + "---|" * (len(kinds) + 1),
        ]
        per_kind = {k: _margins_by_system(records, k) for k in kinds}
        for s in by_sys:
            cells = [f"`{s}`"]
            for k in kinds:
                ms = per_kind[k].get(s)
                st = relevance_stats(ms) if ms else None
                cells.append(f"{_num(st.f1)} ({_num(st.auc)})" if st else "–")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Margins pooled over tasks (cwe left out: its answer is an aggregate of the whole list, no segment holds it). "
        "Truth: the margin's segment holds a planted fact the answer needs. Kept = `relevant`. AUC of `Margin.score` "
        "over the margins that have one (– without scores). Hallucinated & kept: share (count) of kept margins that "
        "name a number or capitalised name found neither in the document nor in the question. See docs/benchmarks.md.",
    ]
    return "\n".join(lines)


def relevance_plot(records: list[dict[str, Any]], path: Path) -> Path | None:
    """P/R/F1 bars per WiM variant and, for variants with scores, ROC curves of the scores against the truth."""
    by_sys = _margins_by_system(records)
    if not by_sys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {s: [m for m in ms if m.get("score") is not None] for s, ms in by_sys.items()}
    scored = {s: ms for s, ms in scored.items() if ms}
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 6.4, 4.4), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / 3
    for j, (label, attr) in enumerate((("precision", "precision"), ("recall", "recall"), ("F1", "f1"))):
        values = [getattr(relevance_stats(ms), attr) for ms in by_sys.values()]
        xs = [i + (j - 1) * width for i in range(len(by_sys))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=label)
        for x, v in zip(xs, values, strict=True):  # the value on each bar: a 0 bar is invisible otherwise
            ax.text(x, (v or 0.0) + 0.01, "–" if v is None else f"{v:.2f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(by_sys)), list(by_sys), rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(-0.6, len(by_sys) - 0.4)
    model = records[0].get("model", "")
    ax.set_title(f"kept margins vs ground truth ({model})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if scored:
        ax = axes[0][1]
        for s, ms in scored.items():
            labels = [bool(m["truth"]) for m in ms]
            if all(labels) or not any(labels):
                continue
            fpr, tpr = roc_curve([m["score"] for m in ms], labels)
            ax.plot(fpr, tpr, marker=".", label=f"{s} (AUC {relevance_stats(ms).auc:.2f})")
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC of Margin.score", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_MARKERS = "osD^vP*X"


def _plot_lines(ax: Any, records: list[dict[str, Any]], x_key: str, y_key: str, spread: float = 0.0) -> None:
    """One line per system; `spread` shifts lines vertically a little so systems with equal values stay visible."""
    systems = _systems(records)
    for i, s in enumerate(systems):
        groups = _group([r for r in records if r["system"] == s], x_key)
        xs = sorted(k[0] for k in groups)
        shift = spread * (i - (len(systems) - 1) / 2)
        ys = [mean(r[y_key] for r in groups[(x,)]) + shift for x in xs]
        ax.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], label=s, alpha=0.85)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plots(records: list[dict[str, Any]], img_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    model = records[0]["model"] if records else ""
    paths = []
    needles = [r for r in records if r["kind"] == "needle" and r["depth"] is not None]
    specs = [
        ("accuracy-vs-depth", needles, "depth", "score", "fact depth (fraction of the context)", "needle accuracy"),
        ("accuracy-vs-length", records, "length", "score", "context length (tokens)", "accuracy, all tasks"),
        ("time-vs-length", records, "length", "seconds", "context length (tokens)", "wall time per task (s)"),
    ]
    for name, data, x_key, y_key, xlabel, ylabel in specs:
        if not data:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        _plot_lines(ax, data, x_key, y_key, spread=0.012 if y_key == "score" else 0.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} ({model})", fontsize=10)
        if y_key == "score":
            ax.set_ylim(-0.08, 1.08)
            fig.text(0.01, 0.01, "lines offset slightly so equal values stay visible", fontsize=7, color="gray")
        fig.tight_layout()
        path = img_dir / f"{stem}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(results: Path, img_dir: Path, md_path: Path | None = None) -> str:
    records = load_records(results)
    if not records:
        raise ValueError(f"{results} holds no results; run `python -m benchmarks run` first.")
    images = plots(records, img_dir, results.stem)
    relevance_png = relevance_plot(records, img_dir / f"{results.stem}-margin-relevance.png")
    meta_path = results.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    parts = [f"### {results.stem}", ""]
    if meta:
        gpu = meta.get("gpu") or "no GPU"
        parts.append(
            f"Model `{meta.get('model')}`, preset `{meta.get('preset')}`; {meta.get('platform')}, "
            f"{meta.get('cpu_count')} CPUs ({meta.get('torch_threads')} torch threads), {gpu}, "
            f"torch {meta.get('torch')}."
        )
        parts.append("")
    parts.append(markdown_table(records))
    parts += ["", "#### Margin relevance", "", relevance_table(records), ""]
    if relevance_png:
        images.append(relevance_png)
    parts += [f"![{p.stem}]({p.as_posix()})" for p in images]
    md = "\n".join(parts) + "\n"
    (md_path or results.with_suffix(".md")).write_text(md, encoding="utf-8")
    return md
