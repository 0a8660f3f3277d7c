"""The report as a person sees it: the bundled example rendered in headless Chromium, measured and photographed.

Skips (with the install command) where Chromium is absent; CI installs it and sets WIM_REQUIRE_BROWSER=1 so the test
cannot skip there. The tiny random model writes nonsense margins and rarely a clear verdict, so the bundled run's
margins are marked kept and dropped in turn here: this tests how each mark is shown, not the classifier.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser import WIDTH, measure, screenshot
from helpers import HOSTILE

from wim_integrations import InputDocument, MarginWritten

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"
KEPT_BG, DROPPED_BG = (231, 244, 236), (241, 241, 239)  # --kept-bg and --drop-bg in html_report's CSS


def rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(float(x)) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return r, g, b


@pytest.fixture(scope="module")
def bundled(tiny_wim):
    docs = [
        InputDocument((ROOT / "examples" / "harbor_report.txt").read_text(encoding="utf-8"), id="harbor_report.txt"),
        InputDocument(HOSTILE, id="untrusted.html", metadata={"source": "a web page"}),
    ]
    result = tiny_wim.run(docs, QUESTION, segment_tokens=400)
    margins = [
        m.model_copy(update={"relevant": i % 2 == 0, "verdict": "yes" if i % 2 == 0 else "no"})
        for i, m in enumerate(result.margins)
    ]
    margins[0] = margins[0].model_copy(update={"score": 0.875})
    return result.model_copy(update={"margins": margins})


def test_the_bundled_example_in_chromium(bundled, tmp_path):
    layout = measure(bundled.to_html(), tmp_path)
    rows = layout["rows"]
    assert layout["pwned"] is None  # neither the <script> nor the onerror handler of the document ran
    assert len(rows) == bundled.n_segments >= 4
    for row, m in zip(rows, bundled.margins, strict=True):
        text, margin = row["text"], row["margin"]["box"]
        assert abs(margin["top"] - text["top"]) <= 1, row  # level with its segment...
        assert margin["left"] >= text["right"] + 20 and margin["right"] <= WIDTH, row  # ...beside it, on the page
        mark = "kept" if m.relevant else "dropped"
        assert mark in row["classes"] and mark in row["margin"]["classes"]
        assert mark.upper() in row["margin"]["visible_text"]  # the pill as shown (CSS upper-cases it)
        assert rgb(row["margin"]["style"]["background"]) == (KEPT_BG if m.relevant else DROPPED_BG)
        assert " ".join(m.text.split())[:20] in " ".join(row["margin"]["visible_text"].split())
    assert "score 0.88" in rows[0]["margin"]["visible_text"] and "verdict: no" in rows[1]["margin"]["visible_text"]
    # the hostile document is on the page as the text it is
    shown = " ".join(r["visible_text"] for r in rows)
    assert '<script>document.body.dataset.pwned = "1"</script> <b>not bold</b> <img src=x onerror=' in shown
    assert "untrusted.html" in shown and "a web page" in shown  # its document label, at its start
    assert QUESTION in layout["header"] and bundled.answer.strip()[:10] in layout["header"]
    kept = [m.segment_index for m in bundled.margins if m.relevant]
    assert [c.rsplit("-m", 1)[1] for c in layout["cites"]] == [str(i) for i in kept]  # links to the kept margins


def test_the_screenshot_shows_the_marks_in_their_colours(bundled, tmp_path):
    pil = pytest.importorskip("PIL.Image")
    page = tmp_path / "report.html"
    bundled.to_html(page)
    layout = measure(page.read_text(encoding="utf-8"), tmp_path)
    png = screenshot(page, tmp_path / "report.png", height=layout["height"])
    image = pil.open(png).convert("RGB")
    assert image.size == (WIDTH, layout["height"])
    for row, m in zip(layout["rows"], bundled.margins, strict=True):
        box = row["margin"]["box"]
        # inside the margin's padding, right of its coloured border: its background, as painted
        pixel = image.getpixel((int(box["left"]) + 10, int(box["top"]) + 4))
        assert pixel == (KEPT_BG if m.relevant else DROPPED_BG), (row["index"], pixel)


def test_a_run_stopped_early_shows_its_unread_segments_greyed(tiny_wim, tmp_path):
    text = (ROOT / "examples" / "harbor_report.txt").read_text(encoding="utf-8")
    stream = tiny_wim.stream(text, QUESTION, segment_tokens=400)
    for event in stream:
        if isinstance(event, MarginWritten) and event.segment_index == 1:
            stream.answer_now()
    result = stream.result
    layout = measure(result.to_html(), tmp_path)
    rows = layout["rows"]
    assert len(rows) == result.n_segments > 3
    for row in rows[:2]:
        assert row["text_style"]["opacity"] == "1" and "UNREAD" not in row["margin"]["visible_text"]
    for row in rows[2:]:
        assert "unread" in row["classes"] and float(row["text_style"]["opacity"]) < 1
        assert "UNREAD" in row["margin"]["visible_text"] and "Not read" in row["margin"]["visible_text"]
        assert abs(row["margin"]["box"]["top"] - row["text"]["top"]) <= 1
    assert "Stopped early" in layout["header"]


@pytest.mark.slow
def test_the_notebook_example_on_the_embedded_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    report = tmp_path / "harbor_report.html"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "html_report.py"), str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report written to {report}" in proc.stdout
    layout = measure(report.read_text(encoding="utf-8"), tmp_path)
    assert len(layout["rows"]) >= 4 and layout["pwned"] is None
    for row in layout["rows"]:
        assert abs(row["margin"]["box"]["top"] - row["text"]["top"]) <= 1
        assert row["margin"]["box"]["left"] > row["text"]["right"]
        assert {"kept", "dropped"} & set(row["margin"]["classes"])
    assert "Corran Point" in " ".join(r["visible_text"] for r in layout["rows"])
