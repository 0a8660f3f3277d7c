"""Run tasks x systems on one model, appending one JSON line per (task, system); reruns skip what is done."""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wim_integrations import WiMConfig, WiMResult
from wim_integrations.backends.base import Backend

from .scoring import score
from .systems import SYSTEMS, Reader, margin_records, run_system
from .tasks import KINDS, Task, make_tasks
from .variants import SystemSpec, parse_system, parse_systems

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Preset:
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...]
    segment_tokens: int | None  # None: the model's default segment size (WiMConfig.segment_tokens=None)
    margin_max_new_tokens: int
    classifier_max_new_tokens: int = 4
    kinds: tuple[str, ...] = KINDS

    def wim_config(self) -> WiMConfig:
        """The base WiM settings every WiM variant of this preset starts from."""
        return WiMConfig(
            segment_tokens=self.segment_tokens,
            margin_max_new_tokens=self.margin_max_new_tokens,
            classifier_max_new_tokens=self.classifier_max_new_tokens,
            # All of a task's margins decoded in one packed batch: the step-by-step loop's results, at less cost.
            margin_batch_size=64,
        )


PRESETS = {
    # Embedded SmolLM2-135M on a CPU: 12 tasks x 6 systems, sized for about 15 minutes on 2 idle cores.
    "quick": Preset(
        lengths=(768, 1536), depths=(0.1, 0.5, 0.9), seeds=(0,), segment_tokens=384, margin_max_new_tokens=20
    ),
    # Larger local models with >= 32k windows (a GPU): 4 lengths x (5 needles + 3 tasks) x 3 seeds = 96 tasks.
    "full": Preset(
        lengths=(4096, 8192, 16384, 32768),
        depths=(0.0, 0.25, 0.5, 0.75, 1.0),
        seeds=(0, 1, 2),
        segment_tokens=4096,
        margin_max_new_tokens=64,
        classifier_max_new_tokens=8,
    ),
    # Embedded SmolLM2-135M on a CPU at its default segment size (window 8192 // 8 = 1024 tokens): 4.6k-token
    # documents in 5 segments; 3 seeds x (2 needles + multihop + location) = 12 tasks x 6 systems, estimated at 28-39
    # minutes on 2 idle cores from the quick preset's timings (docs/benchmarks.md, "Sizing the medium preset").
    "medium": Preset(
        lengths=(4608,),
        depths=(0.25, 0.75),
        seeds=(0, 1, 2),
        segment_tokens=None,
        margin_max_new_tokens=24,
        kinds=("needle", "multihop", "location"),
    ),
}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "model"


def machine_facts() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by an interrupted run: it is simply redone
                continue
    return records


def build_tasks(backend: Backend, preset: Preset, kinds: Sequence[str] | None = None) -> list[Task]:
    kinds = preset.kinds if kinds is None else kinds
    return make_tasks(lambda s: len(backend.encode_text(s)), preset.lengths, preset.depths, kinds, preset.seeds)


def select_tasks(tasks: Sequence[Task], patterns: Sequence[str]) -> list[Task]:
    """The tasks whose id matches any of `patterns` (exact ids or shell patterns such as 'needle-*-s0')."""
    chosen = [t for t in tasks if any(fnmatch.fnmatchcase(t.id, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(t.id, p) for t in tasks)]
    if unmatched:
        raise ValueError(f"no task id matches {unmatched}; this preset's ids: {', '.join(t.id for t in tasks)}")
    return chosen


def run_benchmark(
    backend: Backend,
    tasks: Sequence[Task],
    out: Path,
    *,
    preset_name: str,
    preset: Preset,
    systems: Sequence[str | SystemSpec] = SYSTEMS,
    progress: bool = True,
    classifier: Backend | None = None,
    judge: Any = None,
) -> list[dict[str, Any]]:
    """Run what `out` lacks; return all records for these tasks and systems. Results are appended as they come.

    `systems` are names such as "wim" or "wim[classification=inline]"; `classifier` is the judge model for variants
    with classification="auxiliary", `judge` (a GGUF path or a backend) the one of classification="judge". Every
    WiM variant is validated and planned on the first task (WiM's own input checks) before any forward pass."""
    config = preset.wim_config()
    specs = parse_systems([s.name if isinstance(s, SystemSpec) else s for s in systems], config)
    reader = Reader(backend, config, classifier, judge)
    for spec in specs:
        if spec.reads_with and tasks:
            reader.wim.plan(tasks[0].context, tasks[0].question, spec.config(config))
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in load_records(out):
        if rec.get("model") == backend.name:
            done[(rec["task_id"], rec["system"])] = rec
            if "wim_result" in rec.get("detail", {}):  # a WiM variant's read: its ablations reuse it
                try:
                    key = (parse_system(rec["system"], config).name, rec["task_id"])
                except ValueError:  # a variant of settings this version no longer has: not reusable
                    continue
                reader.wim_results[key] = WiMResult.model_validate(rec["detail"]["wim_result"])
    meta_path = out.with_suffix(".meta.json")
    if not meta_path.exists():
        meta = {"preset": preset_name, "model": backend.name, "preset_settings": asdict(preset), **machine_facts()}
        meta["classifier_model"] = classifier.name if classifier else None
        meta["judge_model"] = reader.wim.judge.name if reader.wim.judge else None
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    # WiM variants run before the ablations that reuse their margins (parse_systems orders them).
    order = [s.name for s in specs]
    by_name = {s.name: s for s in specs}
    todo = [(t, s) for t in tasks for s in order if (t.id, s) not in done]
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(tasks) * len(order),
        initial=len(tasks) * len(order) - len(todo),
        disable=not progress,
        desc="bench",
        unit="run",
        file=sys.stderr,
    )
    with out.open("a", encoding="utf-8") as f:
        for task, system in todo:
            bar.set_postfix_str(f"{task.id} {system}")
            spec = by_name[system]
            result = run_system(reader, spec, task)
            rec = {
                "task_id": task.id,
                "kind": task.kind,
                "length": task.length,
                "n_tokens": task.n_tokens,
                "depth": task.depth,
                "facts": [{"text": f.text, "start_char": f.start_char, "needed": f.needed} for f in task.facts],
                "seed": task.seed,
                "system": system,
                "base_system": spec.base,
                "wim_overrides": dict(spec.overrides),
                "model": backend.name,
                "preset": preset_name,
                "question": task.question,
                "gold": list(task.answers),
                "answer": result.answer,
                "score": score(task, result.answer),
                "seconds": round(result.seconds, 3),
                "generated_tokens": result.generated_tokens,
                "prompt_tokens": result.prompt_tokens,
                "llm_calls": result.llm_calls,
                "detail": result.detail,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            done[(task.id, system)] = rec
            bar.update(1)
    bar.close()
    return [done[(t.id, s)] for t in tasks for s in order]


def preset_of(meta: dict[str, Any]) -> Preset:
    """The preset a results file was run with, from its `.meta.json` (as it was then, not as PRESETS has it now)."""
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["preset_settings"].items()}
    return Preset(**settings)


def annotate_results(path: Path, backend: Backend) -> int:
    """Relabel the margins of every WiM read in `path` with ground truth (relevance.py), regenerating the tasks from
    the file's preset: for results recorded before the labels existed, or after the truth definition changed.
    Returns the number of records relabelled; the file is rewritten in place."""
    meta = json.loads(path.with_suffix(".meta.json").read_text(encoding="utf-8"))
    tasks = {t.id: t for t in build_tasks(backend, preset_of(meta), KINDS)}
    records = load_records(path)
    n = 0
    for rec in records:
        task = tasks.get(rec["task_id"])
        if task is None or "wim_result" not in rec.get("detail", {}):
            continue
        if (task.question, list(task.answers), task.n_tokens) != (rec["question"], rec["gold"], rec["n_tokens"]):
            raise ValueError(f"{path}: task {task.id} no longer matches its record (other tokenizer or task code?)")
        rec["facts"] = [{"text": f.text, "start_char": f.start_char, "needed": f.needed} for f in task.facts]
        rec["detail"]["margins"] = margin_records(task, WiMResult.model_validate(rec["detail"]["wim_result"]))
        n += 1
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return n
