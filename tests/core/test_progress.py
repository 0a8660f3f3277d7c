"""One progress display (tqdm) for the CLI, LangChain's ConsoleProgressHandler and LlamaIndex's WiMProgressHandler."""

from __future__ import annotations

import io
import re

from helpers import SAMPLE

from wim_integrations import InputDocument, WiMConfig
from wim_integrations.frontends.progress import ProgressDisplay

QUESTION = "Who keeps the lighthouse?"
CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=5, answer_max_new_tokens=5, classification="none")


def _margin_lines(text: str) -> list[str]:
    """The margin lines, without their timings (which differ between runs)."""
    return [re.sub(r", \d+\.\ds\]", "]", line) for line in text.splitlines() if line.startswith("  margin ")]


def test_display_draws_a_run(tiny_wim):
    err, out = io.StringIO(), io.StringIO()
    display = ProgressDisplay(err, answer_file=out, show_answer=True, margin_width=12)
    docs = [InputDocument(SAMPLE[:400], id="a"), InputDocument(SAMPLE[400:900], id="b")]
    stream = tiny_wim.stream(docs, QUESTION, config=CFG)
    for event in stream:
        display.on_event(event)
    r = stream.result
    printed = err.getvalue()
    n = r.n_segments
    assert f"{n}/{n} segments read" in printed and "|" in printed  # the tqdm bar, complete
    margins = _margin_lines(printed)
    assert len(margins) == n
    for line, m in zip(margins, r.margins, strict=True):
        assert line.startswith(f"  margin {m.segment_index + 1} [unclassified, kept] (docs: ")
        assert len(line.split("): ", 1)[1]) <= 12  # shortened margin text
    assert printed.splitlines()[-1].startswith("Done in") and "Answering from" in printed
    assert out.getvalue() == r.answer + "\n" or out.getvalue().strip() == r.answer  # the answer, on its own stream


def test_cli_and_both_handlers_print_the_same_margin_lines(tiny_model_dirs, tiny_wim, tmp_path, capsys):
    from llama_index.core.instrumentation import get_dispatcher

    from wim_integrations.frontends.cli import main
    from wim_integrations.langchain import ConsoleProgressHandler, WiMChain
    from wim_integrations.llamaindex import WiMProgressHandler, WiMQueryEngine

    text = SAMPLE[:900]
    doc = tmp_path / "doc.txt"
    doc.write_text(text, encoding="utf-8")
    cli_err = io.StringIO()
    argv = ["ask", "-f", str(doc), "-q", QUESTION, "-m", str(tiny_model_dirs["llama"]), "--classification", "none"]
    argv += ["--segment-tokens", "150", "--margin-tokens", "5", "--answer-tokens", "5"]
    assert main(argv, stdout=io.StringIO(), stderr=cli_err) == 0

    lc_err = io.StringIO()
    chain = WiMChain(wim=tiny_wim, segment_tokens=150, margin_max_new_tokens=5, max_tokens=5)
    chain = chain.model_copy(update={"classification": "none"})
    chain.invoke({"context": text, "question": QUESTION}, {"callbacks": [ConsoleProgressHandler(lc_err)]})

    li_err = io.StringIO()
    handler = WiMProgressHandler(stream=li_err, width=10_000)
    get_dispatcher().add_event_handler(handler)
    try:
        WiMQueryEngine.from_documents([text], tiny_wim, **CFG.model_dump(exclude={"sampling"})).query(QUESTION)
    finally:
        get_dispatcher().event_handlers.remove(handler)

    cli, lc = _margin_lines(cli_err.getvalue()), _margin_lines(lc_err.getvalue())
    assert cli and cli == lc  # one display: the same lines for the same run
    li = [re.sub(r" \(docs: [^)]*\)", "", line) for line in _margin_lines(li_err.getvalue())]
    assert li == cli  # LlamaIndex adds the node ids it read; the rest is the same
    for printed in (cli_err.getvalue(), lc_err.getvalue(), li_err.getvalue()):
        assert f"{len(cli)}/{len(cli)} segments read" in printed and "Done in" in printed


def test_margin_lines_follow_relevance_not_the_verdict_name():
    err = io.StringIO()
    display = ProgressDisplay(err, show_margins=False)
    display.margin(0, "unknown", True, "kept by keep_unknown_verdicts", 0.25)
    display.margin(1, "yes", False, "below a threshold", 0.5, sources=["n1", "n2"])
    assert err.getvalue().splitlines() == [
        "  margin 1 [unknown, kept, 0.2s]",
        "  margin 2 [yes, dropped, 0.5s] (docs: n1, n2)",
    ]
