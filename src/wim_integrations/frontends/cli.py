"""The `wim` command: run WiM on a document from the terminal, watching margins appear."""

from __future__ import annotations

import argparse
import sys
import time
import typing
from pathlib import Path
from typing import TextIO

from ..analysis import Analysis
from ..config import WiMConfig
from ..errors import SettingsError, WiMError
from ..inputs import check_text
from ..prompts import PromptSet, without_placeholders
from .html import check_report_path
from .progress import ProgressDisplay

# `wim ask` options that set a `WiMConfig` field: flag -> field. Type, choices, default and help come from the field,
# so the CLI cannot drift from the config; an option left out keeps the config's default.
CONFIG_OPTIONS = {
    "--segment-tokens": "segment_tokens",
    "--margin-tokens": "margin_max_new_tokens",
    "--answer-tokens": "answer_max_new_tokens",
    "--classification": "classification",
    "--relevance-threshold": "relevance_threshold",
    "--margin-scope": "margin_scope",
    "--classifier-tokens": "classifier_max_new_tokens",
    "--batch": "margin_batch_size",
    "--margin-stop": "margin_stop",
    "--keep-unknown": "keep_unknown_verdicts",
}


# What a field's None default means, where its description does not say.
_NONE_MEANS = {"segment_tokens": "sized for the model"}


def _add_config_option(parser: argparse.ArgumentParser, flag: str, name: str) -> None:
    field = WiMConfig.model_fields[name]
    default = field.default if field.default is not None else _NONE_MEANS.get(name, "None")
    help_text = f"{field.description or name} (WiMConfig.{name}; default: {default})"
    annotation = field.annotation
    if annotation is bool:
        parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        return
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
    if choices:
        parser.add_argument(flag, dest=name, choices=choices, default=None, help=help_text)
        return
    # int, float, or either | None: the non-None type parses the value
    kind = next(t for t in (*typing.get_args(annotation), annotation) if t in (int, float))
    parser.add_argument(flag, dest=name, type=kind, metavar="N" if kind is int else "X", default=None, help=help_text)


def _build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="wim", description="Writing in the Margins: long-context reading.")
    parser.add_argument("--version", action="version", version=f"wim-integrations {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question about a document with WiM")
    ask.add_argument("--file", "-f", help="document to read (UTF-8 text); '-' or omitted reads standard input")
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--model", "-m", help="local HF model directory or cached hub id (default: embedded SmolLM2)")
    ask.add_argument("--classifier-model", help="auxiliary classifier model (with --classification auxiliary)")
    _server_options(ask)
    for flag, name in CONFIG_OPTIONS.items():
        _add_config_option(ask, flag, name)
    ask.add_argument("--json", action="store_true", help="print the full result as JSON instead of progress")
    ask.add_argument("--html", metavar="PATH", help="also write the reading report (document + margins) as HTML")
    ask.add_argument("--quiet", action="store_true", help="print only the answer")
    _add_summarize(sub)
    return parser


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WiMError(
            f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it first, e.g. "
            "`iconv -f latin1 -t utf-8`."
        ) from exc


# The settings `wim summarize` takes (notes are all kept, so no classification options).
SUMMARY_OPTIONS = ("--segment-tokens", "--margin-tokens", "--answer-tokens", "--batch")


def _add_summarize(sub: argparse._SubParsersAction) -> None:
    summ = sub.add_parser(
        "summarize", help="summarise a document (or carry out --instruction over it) with notes after each part"
    )
    summ.add_argument("--file", "-f", help="document to read (UTF-8 text); '-' or omitted reads standard input")
    summ.add_argument(
        "--instruction", "-i", help="what to write from the whole document (default: a summary of its key facts)"
    )
    summ.add_argument("--note-instruction", help="what each note records (default: the part's key facts)")
    summ.add_argument("--model", "-m", help="local HF model directory or cached hub id (default: embedded SmolLM2)")
    for flag in SUMMARY_OPTIONS:
        _add_config_option(summ, flag, CONFIG_OPTIONS[flag])
    _server_options(summ)
    summ.add_argument("--json", action="store_true", help="print the full result (summary, notes) as JSON")
    summ.add_argument("--html", metavar="PATH", help="also write the reading report (document + notes) as HTML")
    summ.add_argument("--quiet", action="store_true", help="print only the summary")


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", metavar="URL", help="read with a served model (e.g. http://127.0.0.1:8080)")
    parser.add_argument("--tokenizer", metavar="PATH", help="with --server: the served model's local tokenizer")
    parser.add_argument(
        "--engine", choices=["llama.cpp", "vllm", "sglang", "openai"], default="llama.cpp", help="with --server"
    )
    parser.add_argument("--served-model", metavar="NAME", help="with --server: the model name the server expects")
    parser.add_argument(
        "--route-header",
        metavar="NAME",
        help="with --server behind a router: send the document's key in this header (vllm-router: x-session-id)",
    )
    parser.add_argument("--gguf", metavar="PATH", help="read with a GGUF file on llama.cpp in process ([llamacpp])")
    parser.add_argument("--ollama", metavar="NAME", help="read with a model pulled by Ollama, e.g. qwen2.5:0.5b")


def _read_document(path: str | None) -> str:
    if path in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise WiMError("no document: pass --file PATH or pipe the text on standard input.")
        # Bytes, decoded strictly: text-mode stdin may decode with surrogateescape (C/POSIX locale) and let
        # undecodable bytes through as lone surrogates.
        buffer = getattr(sys.stdin, "buffer", None)
        return _decode(buffer.read(), "standard input") if buffer is not None else sys.stdin.read()
    p = Path(path)
    if p.is_dir():
        raise WiMError(f"{path} is a directory; pass a text file with --file.")
    if not p.is_file():
        raise WiMError(f"document not found: {path} (pass an existing text file with --file).")
    return _decode(p.read_bytes(), path)


def _config(args: argparse.Namespace) -> WiMConfig:
    """The run's settings from the options given (the others keep WiMConfig's defaults); checks that need no model."""
    config = WiMConfig(**{n: v for n in CONFIG_OPTIONS.values() if (v := getattr(args, n, None)) is not None})
    if getattr(args, "server", None) and not args.tokenizer:
        raise WiMError("--server needs --tokenizer PATH: the served model's tokenizer directory, checked at start.")
    if getattr(args, "route_header", None) and not getattr(args, "server", None):
        raise WiMError("--route-header is for a served model behind a router: use it with --server URL.")
    sources = {"--model": args.model, "--server": args.server, "--gguf": args.gguf, "--ollama": args.ollama}
    named = [flag for flag, value in sources.items() if value]
    if len(named) > 1:
        raise WiMError(f"{' and '.join(named)} each name the model; use one.")
    if args.command != "ask":
        return config
    if config.classification == "auxiliary" and not args.classifier_model:
        raise WiMError("--classification auxiliary needs --classifier-model PATH (the model that judges margins).")
    if args.classifier_model and config.classification != "auxiliary":
        raise WiMError(
            f"--classifier-model is only used with --classification auxiliary (got {config.classification}); "
            "add --classification auxiliary or drop --classifier-model."
        )
    return config


def segment_budget_floor(config: WiMConfig, task: str | Analysis) -> int:
    """A lower bound, on any model, of the tokens of the instruction written after each segment: its word count.

    Every tokenizer WiM supports splits text at whitespace before merging (byte-level BPE, SentencePiece), so each
    word is at least one token; the planner checks the exact count once the model is loaded."""
    prompts = PromptSet.default()
    if isinstance(task, Analysis):  # a note's prompt is filled with the note instruction, not the final one
        template, filling = prompts.note_instruction, task.note_instruction
    else:
        inline = config.classification == "inline"
        template, filling = prompts.margin_instruction_for(inline=inline, scope=config.margin_scope), task
    return len(without_placeholders(template).split()) + len(filling.split())


def check_segment_budget(config: WiMConfig, task: str | Analysis) -> None:
    """Refuse, before any model loads, a segment budget below `segment_budget_floor`."""
    words = segment_budget_floor(config, task)
    if config.segment_tokens is not None and config.segment_tokens < words:
        raise WiMError(
            f"--segment-tokens {config.segment_tokens} is smaller than the instruction written after each segment "
            f"(at least {words} tokens on any model: {words} words); use a few times more, e.g. --segment-tokens "
            f"{max(256, 4 * words)}."
        )


def _silence_library_bars() -> None:
    """transformers' own bars ("Loading weights") would tear through the margin display; WiM reports loading."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = _build_parser().parse_args(argv)
    try:
        if args.html:
            check_report_path(args.html)  # before any model work
        # Everything that can be checked without the model is checked before loading it.
        config = _config(args)
        task: str | Analysis
        if args.command == "ask":
            check_text(args.question, "question")
            if not args.question.strip():
                raise WiMError("the question is empty; pass the question WiM should answer with -q.")
            task = args.question
        else:
            task = Analysis.summary(args.instruction, note_instruction=args.note_instruction)
        check_segment_budget(config, task)
        document = check_text(_read_document(args.file), f"the document {args.file or '(stdin)'}")
        if not document.strip():
            raise WiMError(f"the document {args.file or '(stdin)'} is empty; give WiM some text to read.")
        _silence_library_bars()
        from ..engine import WiM
        from ..models import load_backend, load_default_backend

        t0 = time.perf_counter()
        classifier_model = getattr(args, "classifier_model", None)
        classifier = load_backend(classifier_model) if classifier_model else None
        if args.server:
            from ..backends.server import ServerBackend

            err.write(f"Connecting to the {args.engine} server at {args.server}...\n")
            backend = ServerBackend(
                args.server,
                tokenizer=args.tokenizer,
                engine=args.engine,
                model=args.served_model,
                route_header=args.route_header,
            )
        elif args.model:
            err.write(f"Loading {args.model}...\n")
            backend = load_backend(args.model)
        elif args.gguf or args.ollama:
            from ..llamacpp_models import load_gguf_backend, load_ollama_backend

            err.write(f"Loading {args.gguf or args.ollama} on llama.cpp...\n")
            backend = load_gguf_backend(args.gguf) if args.gguf else load_ollama_backend(args.ollama)
        else:
            err.write("Loading the embedded SmolLM2-135M-Instruct...\n")
            backend = load_default_backend(progress=lambda msg: print(msg, file=err))
        wim = WiM(backend, config=config, classifier=classifier)
        err.write(f"Model ready in {time.perf_counter() - t0:.1f}s.\n")
        stream = wim.stream(document, task)
        show = None if (args.json or args.quiet) else ProgressDisplay(err, answer_file=out, show_answer=True).on_event
        for event in stream:
            if show:
                show(event)
        assert stream.result is not None
        if args.html:
            stream.result.to_html(args.html)
            err.write(f"Report written to {args.html}.\n")
        if args.json:
            out.write(stream.result.model_dump_json(indent=2) + "\n")
        elif args.quiet:
            out.write(stream.result.answer + "\n")
        return 0
    except SettingsError as exc:  # a setting out of range, e.g. --batch 0
        err.write(f"wim: error: invalid setting ({'; '.join(exc.problems)}); see `wim {args.command} --help`.\n")
        return 2
    except WiMError as exc:
        err.write(f"wim: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        err.write("wim: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
