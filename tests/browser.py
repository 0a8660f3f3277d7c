"""Headless Chromium for the report tests: measure a page as laid out, and take screenshots.

Measuring works without a driver library: a copy of the page gets a small script that writes the layout as JSON into
the document, and `chromium --dump-dom` prints the document after it ran. The report itself has no script and forbids
scripts (Content-Security-Policy); the copy drops that header so only the measuring script is allowed to run, and any
script hidden in the user's text would run too if it were not escaped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

WIDTH = 1280

_MEASURE = """<script>
(() => {
  const box = e => { const r = e.getBoundingClientRect();
    return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right}; };
  const style = e => { const s = getComputedStyle(e); return {background: s.backgroundColor, opacity: s.opacity}; };
  const rows = Array.from(document.querySelectorAll("section.seg")).map(s => {
    const text = s.querySelector(".text"), margin = s.querySelector("aside.margin");
    return {index: +s.dataset.segment, classes: s.className.split(" "), text: box(text), text_style: style(text),
      visible_text: text.innerText, source_text: s.querySelector(".body").textContent,
      open: s.querySelector("details").open,
      margin: {classes: margin.className.split(" "), box: box(margin), style: style(margin),
               visible_text: margin.innerText}};
  });
  const out = {pwned: document.body.dataset.pwned || null, rows: rows,
    height: Math.ceil(document.documentElement.scrollHeight),
    cites: Array.from(document.querySelectorAll("a.cite")).map(a => a.getAttribute("href")),
    header: document.querySelector("header.top").innerText};
  const pre = document.createElement("pre");
  pre.id = "wim-layout";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""

_CSP = re.compile(r'<meta http-equiv="Content-Security-Policy"[^>]*>\n?')


def chromium() -> str:
    """The browser, or skip with the reason (fail instead under WIM_REQUIRE_BROWSER=1, as CI sets)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    reason = "headless Chromium not found: install it with `bash scripts/install_chromium.sh` (Debian's chromium)"
    if os.environ.get("WIM_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(args: list[str]) -> str:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio"]
    cmd += ["--force-device-scale-factor=1", "--no-first-run", "--disable-extensions", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def measure(page: str, work: Path, height: int = 2000) -> dict:
    """Lay `page` out in a WIDTH-wide window and return what `_MEASURE` saw."""
    path = work / "measured.html"
    path.write_text(_CSP.sub("", page).replace("</body>", _MEASURE + "\n</body>"), encoding="utf-8")
    dom = _run([f"--window-size={WIDTH},{height}", "--virtual-time-budget=3000", "--dump-dom", path.as_uri()])
    found = re.search(r'<pre id="wim-layout">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run:\n" + dom[-2000:]
    from html import unescape

    return json.loads(unescape(found.group(1)))


def screenshot(page_path: Path, png: Path, height: int, width: int = WIDTH) -> Path:
    """A PNG of the page as shown in a `width` x `height` window (the page's own file, CSP and all)."""
    _run([f"--window-size={width},{height}", f"--screenshot={png}", page_path.as_uri()])
    assert png.is_file() and png.stat().st_size > 0
    return png
