"""The `wim` command: run WiM on a document from the terminal, watching margins appear."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO, get_args

from pydantic import ValidationError

from .config import ClassificationMode, WiMConfig
from .errors import WiMError
from .events import AnswerStarted, AnswerToken, Finished, MarginWritten, SegmentRead
from .html_report import check_report_path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wim", description="Writing in the Margins: long-context reading.")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="answer a question about a document with WiM")
    ask.add_argument("--file", "-f", help="document to read (UTF-8 text); '-' or omitted reads standard input")
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--model", "-m", help="local HF model directory or cached hub id (default: embedded SmolLM2)")
    ask.add_argument("--classifier-model", help="auxiliary classifier model (with --classification auxiliary)")
    ask.add_argument("--segment-tokens", type=int, help="segment size in model tokens (default: sized for the model)")
    ask.add_argument("--margin-tokens", type=int, default=64, help="max new tokens per margin (default 64)")
    ask.add_argument("--answer-tokens", type=int, default=256, help="max new tokens of the answer (default 256)")
    ask.add_argument(
        "--classification",
        choices=list(get_args(ClassificationMode)),
        help="how margins are judged (default: segment_pmi, scored from the model's probabilities)",
    )
    ask.add_argument("--relevance-threshold", type=float, help="score-based modes keep margins scoring at least this")
    ask.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="decode the margins of N segments together (faster; margins then appear N at a time; default 1)",
    )
    ask.add_argument("--json", action="store_true", help="print the full result as JSON instead of progress")
    ask.add_argument("--html", metavar="PATH", help="also write the reading report (document + margins) as HTML")
    ask.add_argument("--quiet", action="store_true", help="print only the answer")
    return parser


def _read_document(path: str | None) -> str:
    if path in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise WiMError("no document: pass --file PATH or pipe the text on standard input.")
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise WiMError(f"document not found: {path} (pass an existing text file with --file).")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise WiMError(f"{path} is not UTF-8 text ({exc.reason}); convert it to text first.") from exc


class _Progress:
    """Plain-text progress on stderr: a bar of segments read, each margin with its verdict, then the answer."""

    def __init__(self, err: TextIO, out: TextIO) -> None:
        self.err, self.out = err, out

    def bar(self, done: int, total: int, width: int = 24) -> str:
        filled = round(width * done / total) if total else width
        return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"

    def __call__(self, event: object) -> None:
        if isinstance(event, SegmentRead):
            self.err.write(
                f"{self.bar(event.segment_index + 1, event.n_segments)} read segment {event.segment_index + 1} "
                f"({event.n_tokens} tokens, {event.seconds:.1f}s); writing margin...\n"
            )
        elif isinstance(event, MarginWritten):
            m = event.margin
            mark = {"yes": "relevant", "no": "not relevant", "unknown": "unclear -> dropped"}.get(m.verdict, "kept")
            if m.score is not None:
                mark = f"{'kept' if m.relevant else 'dropped'}, score {m.score:.2f}"
            text = " ".join(m.text.split()) or "(empty)"
            self.err.write(f"    margin {event.segment_index + 1} [{mark}, {m.seconds:.1f}s]: {text}\n")
        elif isinstance(event, AnswerStarted):
            self.err.write(
                f"Answering from {event.segments_read}/{event.n_segments} segments and "
                f"{event.n_relevant_margins} relevant margin(s):\n"
            )
        elif isinstance(event, AnswerToken):
            self.out.write(event.text)
            self.out.flush()
        elif isinstance(event, Finished):
            t = event.result.timings
            self.out.write("\n")
            self.err.write(
                f"Done in {t.total_seconds:.1f}s (prefill {t.prefill_seconds:.1f}s, margins {t.margin_seconds:.1f}s, "
                f"classify {t.classify_seconds:.1f}s, answer {t.answer_seconds:.1f}s).\n"
            )
        self.err.flush()


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = _build_parser().parse_args(argv)
    try:
        if args.html:
            check_report_path(args.html)  # before any model work
        document = _read_document(args.file)
        if not document.strip():
            raise WiMError(f"the document {args.file or '(stdin)'} is empty; give WiM some text to read.")
        chosen = {"classification": args.classification, "relevance_threshold": args.relevance_threshold}
        config = WiMConfig(
            segment_tokens=args.segment_tokens,
            margin_max_new_tokens=args.margin_tokens,
            answer_max_new_tokens=args.answer_tokens,
            margin_batch_size=args.batch,
            **{k: v for k, v in chosen.items() if v is not None},  # unset: WiMConfig's defaults
        )
        from .engine import WiM

        t0 = time.perf_counter()
        if args.model:
            err.write(f"Loading {args.model}...\n")
            wim = WiM.from_pretrained(args.model, classifier_model=args.classifier_model, config=config)
        else:
            err.write("Loading the embedded SmolLM2-135M-Instruct...\n")
            wim = WiM.default(config=config, progress=lambda msg: err.write(msg + "\n"))
        err.write(f"Model ready in {time.perf_counter() - t0:.1f}s.\n")
        stream = wim.stream(document, args.question)
        show = None if (args.json or args.quiet) else _Progress(err, out)
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
    except WiMError as exc:
        err.write(f"wim: error: {exc}\n")
        return 2
    except ValidationError as exc:  # a setting out of range, e.g. --batch 0
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.write(f"wim: error: invalid setting ({problems}); see `wim ask --help`.\n")
        return 2
    except KeyboardInterrupt:
        err.write("wim: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
