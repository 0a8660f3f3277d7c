"""`python -m benchmarks run --preset quick [--model PATH | --gguf PATH] [--systems ...] [--ids ...]`, `... report`.

Through a serving engine instead of in process: `--server URL --engine vllm --tokenizer DIR [--served-model NAME]`,
or `--start-vllm` (starts vLLM's CPU build from .venv-vllm on the embedded model, scripts/setup_vllm.sh, and stops it
at the end)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from wim_integrations.errors import WiMInputError

from .runner import PRESETS, RESULTS_DIR, annotate_results, build_tasks, run_benchmark, select_tasks, slug
from .systems import SYSTEMS
from .tasks import KINDS
from .variants import parse_systems, split_names


def _load_backend(model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model == "default":
        from wim_integrations.models import load_default_backend

        return load_default_backend()
    from wim_integrations.models import load_backend

    return load_backend(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a preset (resumes from its results file)")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument(
        "--model", default="default", help="local model dir or HF cache name; 'default' = embedded SmolLM2"
    )
    run.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        help=f"systems, space- or comma-separated, from {','.join(SYSTEMS)}; WiM variants as "
        "'wim[classification=inline,margin_max_new_tokens=32]' (quote them for the shell); an ablation in that form "
        "(e.g. 'wim_margins_only[classification=inline]') reuses that WiM variant's margins",
    )
    run.add_argument("--tasks", help=f"comma-separated task kinds from {','.join(KINDS)} (default: the preset's kinds)")
    run.add_argument(
        "--ids",
        nargs="+",
        help="only these task ids, exact or shell patterns (e.g. 'needle-*-s0' 'multihop-*'); "
        "ids look like needle-L4608-d0.25-s0",
    )
    run.add_argument(
        "--classifier-model", help="judge model (local dir or HF cache name) for variants with classification=auxiliary"
    )
    run.add_argument("--judge", help="judge model (a GGUF file) for variants with classification=judge")
    run.add_argument("--out", type=Path, help="results JSONL (default benchmarks/results/<preset>-<model>.jsonl)")
    run.add_argument("--server", help="read through this serving engine's URL instead of in process")
    run.add_argument("--engine", default="vllm", help="with --server: llama.cpp, vllm, sglang or openai")
    run.add_argument(
        "--tokenizer", help="with --server: the served model's tokenizer dir (default: the embedded model's)"
    )
    run.add_argument("--served-model", help="with --server: the model name the server expects")
    run.add_argument("--start-vllm", action="store_true", help="start vLLM (CPU, .venv-vllm) on the embedded model")
    run.add_argument(
        "--gguf",
        help="read on llama.cpp in process (the [llamacpp] extra) from this GGUF file; 'default' = the embedded one",
    )
    run.add_argument("--threads", type=int, help="with --gguf: llama.cpp threads (default: half the cores)")
    run.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="markdown table + PNG plots from a results file")
    rep.add_argument("results", nargs="?", type=Path, help="results JSONL (default: every file in benchmarks/results)")
    rep.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    rep.add_argument("--md", type=Path, help="also write the markdown here")
    ann = sub.add_parser(
        "annotate", help="add ground-truth margin labels to results recorded without them (regenerates the tasks)"
    )
    ann.add_argument("results", type=Path)
    ann.add_argument("--model", default="default", help="the model the results were run with (for its tokenizer)")
    args = parser.parse_args(argv)

    if args.command == "annotate":
        n = annotate_results(args.results, _load_backend(args.model))
        print(f"{args.results}: labelled the margins of {n} WiM reads", file=sys.stderr)
        return 0

    if args.command == "run":
        preset = PRESETS[args.preset]
        kinds = [k for k in args.tasks.split(",") if k] if args.tasks else list(preset.kinds)
        try:  # bad names fail here, before the model loads
            specs = parse_systems(split_names(args.systems), preset.wim_config())
            systems = [s.name for s in specs]
            judged = [
                s.name for s in specs if s.reads_with and s.config(preset.wim_config()).classification == "auxiliary"
            ]
            if judged and not args.classifier_model:
                raise ValueError(f"{', '.join(judged)} classify with an auxiliary model: pass --classifier-model PATH")
            by_judge = [
                s.name for s in specs if s.reads_with and s.config(preset.wim_config()).classification == "judge"
            ]
            if by_judge and not args.judge:
                raise ValueError(f"{', '.join(by_judge)} are judged by a judge model: pass --judge GGUF_PATH")
            unknown = set(kinds) - set(KINDS)
            if unknown:
                raise ValueError(f"unknown task kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
        except ValueError as e:
            parser.error(str(e))
        with contextlib.ExitStack() as stack:
            if args.server or args.start_vllm:
                backend = _server_backend(args, stack)
            elif args.gguf:
                backend = _gguf_backend(args.gguf, args.threads)
            else:
                backend = _load_backend(args.model)
            return _run(args, parser, preset, kinds, systems, backend)

    from .report import write_report

    paths = [args.results] if args.results else sorted(RESULTS_DIR.glob("*.jsonl"))
    if not paths:
        parser.error("no results yet: run `python -m benchmarks run --preset quick` first")
    for path in paths:
        md = write_report(path, args.img_dir, args.md)
        print(md)
    return 0


def _gguf_backend(path: str, threads: int | None):
    from wim_integrations.llamacpp_models import load_gguf_backend
    from wim_integrations.models import default_gguf_path

    return load_gguf_backend(default_gguf_path() if path == "default" else path, n_threads=threads)


def _server_backend(args: argparse.Namespace, stack: contextlib.ExitStack):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wim_integrations.backends.server import ServerBackend
    from wim_integrations.models import ensure_default_converted

    tokenizer = args.tokenizer or str(ensure_default_converted())
    url, model = args.server, args.served_model
    if args.start_vllm:
        from wim_integrations.backends.vllm_server import VLLMServer

        server = stack.enter_context(VLLMServer(tokenizer))
        print(f"vLLM started in {server.started_in:.0f} s at {server.url}", file=sys.stderr)
        url, model, args.engine = server.url, server.served_name, "vllm"
    backend = ServerBackend(url, tokenizer=tokenizer, engine=args.engine, model=model)
    stack.callback(backend.close)
    return backend


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, preset, kinds, systems, backend) -> int:
    classifier = _load_backend(args.classifier_model) if args.classifier_model else None
    tasks = build_tasks(backend, preset, kinds)
    if args.ids:
        try:
            tasks = select_tasks(tasks, args.ids)
        except ValueError as e:
            parser.error(str(e))
    out = args.out or RESULTS_DIR / f"{args.preset}-{slug(backend.name)}.jsonl"
    try:
        run_benchmark(
            backend,
            tasks,
            out,
            preset_name=args.preset,
            preset=preset,
            systems=systems,
            progress=not args.no_progress,
            classifier=classifier,
            judge=args.judge,
        )
    except WiMInputError as e:  # WiM's input checks: their message (with the fix), not a traceback
        parser.error(str(e))
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
