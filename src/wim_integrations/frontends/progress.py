"""The console progress display shared by the `wim` CLI, LangChain's `ConsoleProgressHandler` and LlamaIndex's
`WiMProgressHandler`: a tqdm bar of segments read, one line per margin printed above it, then the answer.

The adapters see the same run through different events (core events, LangChain custom events, LlamaIndex
instrumentation events), so the display takes plain values; `on_event` feeds it core events directly.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from tqdm import tqdm

from ..events import AnswerStarted, AnswerToken, Finished, MarginWritten, SegmentRead


def _short(text: str, width: int | None) -> str:
    text = " ".join(text.split()) or "(empty)"
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


class ProgressDisplay:
    """Draws one WiM run at a time on `file` (stderr by default).

    Args:
        file: where the bar and the margin lines go.
        answer_file: where answer text goes with `show_answer` (default: `file`); the CLI sends it to stdout.
        show_margins: print each margin's text (its verdict is always shown).
        show_answer: echo answer text as it streams.
        margin_width: shorten margin text to this many characters (None: whole).
        bar_width: characters of the bar itself.
    """

    def __init__(
        self,
        file: TextIO | None = None,
        *,
        answer_file: TextIO | None = None,
        show_margins: bool = True,
        show_answer: bool = False,
        margin_width: int | None = None,
        bar_width: int = 24,
    ) -> None:
        self._file, self._answer_file = file, answer_file
        self.show_margins, self.show_answer = show_margins, show_answer
        self.margin_width, self.bar_width = margin_width, bar_width
        self._bar: tqdm | None = None
        self._answering = False
        self._lock = threading.RLock()  # handlers may be called from worker threads

    @property
    def file(self) -> TextIO:
        return self._file or sys.stderr  # looked up late: tests and notebooks swap sys.stderr

    # -- what the adapters report ----------------------------------------------------------------------
    def segment_read(self, index: int, n_segments: int, n_tokens: int, seconds: float) -> None:
        with self._lock:
            if self._bar is None or index == 0 or self._bar.total != n_segments:
                self._new_bar(n_segments)
            assert self._bar is not None
            self._bar.set_description_str(f"read segment {index + 1} ({n_tokens} tokens, {seconds:.1f}s)", False)
            self._bar.update(index + 1 - self._bar.n)

    def margin(
        self,
        index: int,
        verdict: str,
        relevant: bool,
        text: str,
        seconds: float,
        sources: Sequence[str] = (),
        score: float | None = None,
    ) -> None:
        judged = verdict if score is None else f"score {score:.2f}"  # a score decides, where there is one
        line = f"  margin {index + 1} [{judged}, {'kept' if relevant else 'dropped'}, {seconds:.1f}s]"
        if sources:
            line += f" (docs: {', '.join(sources)})"
        if self.show_margins:
            line += f": {_short(text, self.margin_width)}"
        self._line(line)

    def answer_started(self, n_relevant_margins: int, segments_read: int, n_segments: int) -> None:
        with self._lock:
            self._close_bar()
            self._answering = True
        self._line(f"Answering from {segments_read}/{n_segments} segments and {n_relevant_margins} relevant margin(s):")

    def answer_token(self, text: str) -> None:
        if self.show_answer:
            out = self._answer_file or self.file
            out.write(text)
            out.flush()

    def finished(self, timings: Any) -> None:
        """`timings`: the run's `Timings` (or its JSON dump)."""
        t = timings if isinstance(timings, dict) else timings.model_dump()
        with self._lock:
            self._close_bar()
            if self.show_answer and self._answering:
                (self._answer_file or self.file).write("\n")
            self._answering = False
        self._line(
            f"Done in {t.get('total_seconds', 0.0):.1f}s (prefill {t.get('prefill_seconds', 0.0):.1f}s, margins "
            f"{t.get('margin_seconds', 0.0):.1f}s, classify {t.get('classify_seconds', 0.0):.1f}s, answer "
            f"{t.get('answer_seconds', 0.0):.1f}s)."
        )

    def on_event(self, event: Any) -> None:
        """Show one core event (`SegmentRead`, `MarginWritten`, ...); others are ignored."""
        if isinstance(event, SegmentRead):
            self.segment_read(event.segment_index, event.n_segments, event.n_tokens, event.seconds)
        elif isinstance(event, MarginWritten):
            m = event.margin
            sources = [str(d.doc_id) for d in m.documents if d.doc_id is not None]
            self.margin(m.segment_index, m.verdict, m.relevant, m.text, m.seconds, sources, m.score)
        elif isinstance(event, AnswerStarted):
            self.answer_started(event.n_relevant_margins, event.segments_read, event.n_segments)
        elif isinstance(event, AnswerToken):
            self.answer_token(event.text)
        elif isinstance(event, Finished):
            self.finished(event.result.timings)

    def close(self) -> None:
        with self._lock:
            self._close_bar()

    # -- drawing ---------------------------------------------------------------------------------------
    def _new_bar(self, total: int) -> None:
        self._close_bar()
        self._bar = tqdm(
            total=total,
            file=self.file,
            bar_format=f"{{desc}} |{{bar:{self.bar_width}}}| {{n_fmt}}/{{total_fmt}} segments read",
            mininterval=0,  # every segment is shown: there are few and each takes a while
            dynamic_ncols=False,
            leave=True,
        )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, line: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.write(line, file=self.file)  # above the bar, which is redrawn below
            else:
                self.file.write(line + "\n")
                self.file.flush()
