"""Markdown table and PNG plots from a results JSONL file."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from statistics import mean
from typing import Any

from .runner import load_records
from .systems import SYSTEMS

BASELINE = "long_context"


def _systems(records: Iterable[dict[str, Any]]) -> list[str]:
    present = {r["system"] for r in records}
    return [s for s in SYSTEMS if s in present]


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
    base_time = {r["task_id"]: r["seconds"] for r in records if r["system"] == BASELINE}
    head = ["system", *[f"{k} {n // 1024}k" if n % 1024 == 0 else f"{k} {n}" for k, n in columns]]
    head += ["mean acc", "mean time (s)", f"time / {BASELINE}", "tokens generated", "LLM calls"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in systems:
        rows = by_sys[(s,)]
        cells = [f"`{s}`"]
        for k, n in columns:
            group = by_col.get((s, k, n), [])
            cells.append(f"{mean(r['score'] for r in group):.2f}" if group else "–")
        ratios = [r["seconds"] / base_time[r["task_id"]] for r in rows if base_time.get(r["task_id"])]
        cells += [
            f"{mean(r['score'] for r in rows):.2f}",
            f"{mean(r['seconds'] for r in rows):.1f}",
            f"{mean(ratios):.2f}x" if ratios else "–",
            f"{mean(r['generated_tokens'] for r in rows):.0f}",
            f"{mean(r['llm_calls'] for r in rows):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    n_tasks = len({r["task_id"] for r in records})
    lines.append("")
    lines.append(
        f"{n_tasks} tasks; accuracy = mean score (needle/multihop/location: normalized match, 1 or 0; cwe: F1). "
        f"Times are wall-clock seconds per task; the ratio is the mean of per-task ratios to `{BASELINE}`."
    )
    return "\n".join(lines)


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
    parts.append("")
    parts += [f"![{p.stem}]({p.as_posix()})" for p in images]
    md = "\n".join(parts) + "\n"
    (md_path or results.with_suffix(".md")).write_text(md, encoding="utf-8")
    return md
