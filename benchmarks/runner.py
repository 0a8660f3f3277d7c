"""Run tasks x systems on one model, appending one JSON line per (task, system); reruns skip what is done."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wim_integrations import WiMConfig, WiMResult
from wim_integrations.backends.base import Backend

from .scoring import score
from .systems import RUNNERS, SYSTEMS, Reader
from .tasks import KINDS, Task, make_tasks

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Preset:
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...]
    segment_tokens: int
    margin_max_new_tokens: int
    classifier_max_new_tokens: int = 4


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


def build_tasks(backend: Backend, preset: Preset, kinds: Sequence[str] = KINDS) -> list[Task]:
    return make_tasks(lambda s: len(backend.encode_text(s)), preset.lengths, preset.depths, kinds, preset.seeds)


def run_benchmark(
    backend: Backend,
    tasks: Sequence[Task],
    out: Path,
    *,
    preset_name: str,
    preset: Preset,
    systems: Sequence[str] = SYSTEMS,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run what `out` lacks; return all records for these tasks and systems. Results are appended as they come."""
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {sorted(unknown)}; known: {list(SYSTEMS)}")
    config = WiMConfig(
        segment_tokens=preset.segment_tokens,
        margin_max_new_tokens=preset.margin_max_new_tokens,
        classifier_max_new_tokens=preset.classifier_max_new_tokens,
        # All of a task's margins decoded in one packed batch: the step-by-step loop's results, at less cost.
        margin_batch_size=64,
    )
    reader = Reader(backend, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in load_records(out):
        if rec.get("model") == backend.name:
            done[(rec["task_id"], rec["system"])] = rec
            if rec["system"] == "wim" and "wim_result" in rec.get("detail", {}):
                reader.wim_results[rec["task_id"]] = WiMResult.model_validate(rec["detail"]["wim_result"])
    meta_path = out.with_suffix(".meta.json")
    if not meta_path.exists():
        meta = {"preset": preset_name, "model": backend.name, "preset_settings": preset.__dict__, **machine_facts()}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    order = [s for s in SYSTEMS if s in systems]  # wim first among the WiM family: the ablations reuse its margins
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
            result = RUNNERS[system](reader, task)
            rec = {
                "task_id": task.id,
                "kind": task.kind,
                "length": task.length,
                "n_tokens": task.n_tokens,
                "depth": task.depth,
                "seed": task.seed,
                "system": system,
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
