"""The HTML reading report: what the result keeps for it, escaping, documents from the adapters, early stops, the CLI.

Runs use the tiny random-weight model (nonsense margins, real structure). The page as a browser shows it is tested in
test_html_browser.py."""

from __future__ import annotations

import json
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import HOSTILE, SAMPLE, run_cli

from wim_integrations import InputDocument, MarginWritten, WiMInputError, WiMResult
from wim_integrations.frontends.html import COLLAPSE_ABOVE_SEGMENTS, render_fragment, render_page


class Tree(HTMLParser):
    """Elements as (tag, attrs, text inside), enough to check structure without a browser."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self.stack: list[dict] = []

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(el)
        if tag not in ("meta", "br", "img", "input", "link"):
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self.stack:
            el["text"] += data

    def find(self, tag: str | None = None, cls: str | None = None) -> list[dict]:
        return [
            e
            for e in self.elements
            if (tag is None or e["tag"] == tag) and (cls is None or cls in e["attrs"].get("class", "").split())
        ]


def parse(page: str) -> Tree:
    tree = Tree()
    tree.feed(page)
    return tree


def documents() -> list[InputDocument]:
    return [
        InputDocument(SAMPLE, id="harbor.txt", metadata={"source": "guide/harbor.md", "page": 3}),
        InputDocument(HOSTILE, id="<b>untrusted</b>", metadata={"note": "<script>x()</script>"}),
    ]


@pytest.fixture(scope="module")
def result(tiny_wim) -> WiMResult:
    return tiny_wim.run(documents(), "Who keeps the <i>lighthouse</i>?")


def test_the_result_keeps_the_read_text_segments_and_documents(result):
    assert result.context_text == SAMPLE + "\n\n" + HOSTILE
    assert [s.index for s in result.segments] == list(range(result.n_segments)) and result.n_segments >= 3
    assert all(s.read for s in result.segments) and all(s.seconds > 0 for s in result.segments)
    # the segments tile the text, and each margin sits on its segment's span
    assert result.segments[0].char_span[0] == 0 and result.segments[-1].char_span[1] == len(result.context_text)
    for a, b in zip(result.segments, result.segments[1:], strict=False):
        assert a.char_span[1] == b.char_span[0] and a.token_span[1] == b.token_span[0]
    for m in result.margins:
        assert m.char_span == result.segments[m.segment_index].char_span
    d0, d1 = result.documents
    assert (d0.id, d0.metadata, d0.char_span) == (
        "harbor.txt",
        {"source": "guide/harbor.md", "page": 3},
        (0, len(SAMPLE)),
    )
    assert result.context_text[d1.char_span[0] : d1.char_span[1]] == HOSTILE
    # the text is for rendering only: dumps (JSON, traces, event payloads) stay as small as before
    assert "context_text" not in result.model_dump() and "Untrusted notes" not in result.model_dump_json()
    assert json.loads(result.model_dump_json())["segments"][0]["read"] is True


def test_user_and_model_text_is_escaped_everywhere(result):
    hostile_margin = result.margins[0].model_copy(update={"text": "<script>alert(1)</script><b>m</b>"})
    shown = result.model_copy(update={"margins": [hostile_margin, *result.margins[1:]], "answer": "<img src=y>"})
    for page in (render_page(shown), render_fragment(shown), shown._repr_html_()):
        tree = parse(page)
        assert not tree.find("script") and not tree.find("img") and not tree.find("b") and not tree.find("i")
        assert "<script" not in page.lower()
        body = "".join(e["text"] for e in tree.find(cls="body"))
        assert '<script>document.body.dataset.pwned = "1"</script> <b>not bold</b>' in body  # shown as text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=y&gt;" in page
        assert "Who keeps the &lt;i&gt;lighthouse&lt;/i&gt;?" in page
        assert "&lt;b&gt;untrusted&lt;/b&gt;" in page and "&lt;script&gt;x()&lt;/script&gt;" in page  # id, metadata
    assert "Content-Security-Policy" in render_page(shown) and "default-src 'none'" in render_page(shown)


def test_each_margin_is_in_its_segments_row_with_its_mark(result):
    # one margin kept, one dropped, one with a score: each shows its own mark
    margins = list(result.margins)
    margins[0] = margins[0].model_copy(update={"relevant": True, "verdict": "yes", "score": 0.8125})
    margins[1] = margins[1].model_copy(update={"relevant": False, "verdict": "no", "score": None})
    shown = result.model_copy(update={"margins": margins})
    tree = parse(render_page(shown))
    rows = tree.find("section", "seg")
    assert len(rows) == shown.n_segments
    asides = tree.find("aside", "margin")
    assert [int(a["attrs"]["data-segment"]) for a in asides] == [int(r["attrs"]["data-segment"]) for r in rows]
    for row, m in zip(rows, margins, strict=True):
        assert (" ".join(m.text.split()) or "(empty margin)") in " ".join(row["text"].split())
        assert ("kept" if m.relevant else "dropped") in row["attrs"]["class"].split()
    assert "score 0.81" in asides[0]["text"] and "kept" in asides[0]["text"]
    assert "verdict: no" in asides[1]["text"] and "dropped" in asides[1]["text"]
    # the answer links to the margins it was given, and only those
    cites = [e["attrs"]["href"] for e in tree.find("a", "cite")]
    ids = {a["attrs"]["id"] for a in asides}
    assert len(cites) == sum(m.relevant for m in margins) and all(c[1:] in ids for c in cites)
    assert "margin 1" in tree.find("a", "cite")[0]["text"]


def test_scored_margins_show_their_score_instead_of_the_verdict(tiny_wim):
    r = tiny_wim.run(SAMPLE, "Who keeps the lighthouse?", classification="lexical")
    assert r.margins and all(m.score is not None for m in r.margins)
    asides = parse(render_page(r)).find("aside", "margin")
    for aside, m in zip(asides, r.margins, strict=True):
        assert f"score {m.score:.2f}" in aside["text"] and "verdict" not in aside["text"]
        assert ("kept" if m.relevant else "dropped") in aside["attrs"]["class"].split()


def test_a_run_stopped_with_answer_now_shows_unread_segments(tiny_wim):
    stream = tiny_wim.stream(SAMPLE, "Who keeps the lighthouse?")
    for event in stream:
        if isinstance(event, MarginWritten) and event.segment_index == 1:
            stream.answer_now()
    r = stream.result
    assert r.stopped_early and r.segments_read == 2 < r.n_segments
    assert [s.read for s in r.segments] == [True, True] + [False] * (r.n_segments - 2)
    assert all(s.seconds == 0 for s in r.segments[2:])
    tree = parse(render_page(r))
    rows = tree.find("section", "seg")
    assert [row["attrs"]["class"].split()[1] in ("kept", "dropped") for row in rows[:2]] == [True, True]
    assert all("unread" in row["attrs"]["class"].split() for row in rows[2:])
    assert all("Not read" in row["text"] for row in rows[2:])
    assert "Stopped early" in tree.find(cls="notice")[0]["text"]
    # the unread text is still shown (greyed), so the reader sees what the answer did not use
    assert SAMPLE.split("\n\n")[-1].strip()[:40] in "".join(r["text"] for r in rows[2:])


def test_a_segment_read_when_answer_now_came_shows_as_read_without_a_margin(tiny_wim):
    stream = tiny_wim.stream(SAMPLE, "Who keeps the lighthouse?")
    for event in stream:
        if event.type == "segment_read" and event.segment_index == 1:
            stream.answer_now()  # segment 2 is in the cache (the answer uses it) but gets no margin
    r = stream.result
    assert [m.segment_index for m in r.margins] == [0] and r.segments_read == 2
    tree = parse(render_page(r))
    states = [row["attrs"]["class"].split()[1] for row in tree.find("section", "seg")]
    assert states[1:] == ["read-only"] + ["unread"] * (r.n_segments - 2)
    assert "Read, no margin" in tree.find("section", "seg")[1]["text"]


def test_long_documents_collapse_the_segments_without_a_kept_margin(tiny_wim):
    r = tiny_wim.run(SAMPLE * 3, "Who keeps the lighthouse?", classification="none")
    assert r.n_segments > COLLAPSE_ABOVE_SEGMENTS
    margins = [m.model_copy(update={"relevant": m.segment_index % 3 == 0}) for m in r.margins]
    tree = parse(render_page(r.model_copy(update={"margins": margins})))
    opened = ["open" in d["attrs"] for d in tree.find("details", "segtext")]
    assert opened == [m.relevant for m in margins]
    assert len(tree.find("ol")[0]["text"]) > 0 and len(tree.find("details", "outline")) == 1  # the outline
    small = parse(render_page(tiny_wim.run(SAMPLE, "Who?")))
    assert all("open" in d["attrs"] for d in small.find("details", "segtext"))


def test_a_result_rebuilt_from_json_renders_without_its_text(result):
    rebuilt = WiMResult.model_validate_json(result.model_dump_json())
    page = render_page(rebuilt)
    assert "carries no context text" in page and "Untrusted notes" not in page
    assert len(parse(page).find("aside", "margin")) == len(result.margins)


def test_to_html_writes_the_page_and_rejects_a_bad_path(result, tmp_path):
    path = tmp_path / "report.html"
    page = result.to_html(path)
    assert path.read_text(encoding="utf-8") == page and page.startswith("<!DOCTYPE html>")
    assert result.to_html() == page  # same page without writing
    with pytest.raises(WiMInputError, match="does not exist; create it"):
        result.to_html(tmp_path / "missing" / "report.html")
    with pytest.raises(WiMInputError, match="is a directory"):
        result.to_html(tmp_path)
    fragment = result._repr_html_()
    assert fragment.startswith('<div class="wim-report"') and "<html" not in fragment and "<style>" in fragment


def test_langchain_documents_show_their_ids_and_metadata(tiny_wim):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from wim_integrations import WiMChain

    docs = [
        Document(page_content=SAMPLE, id="lc-harbor", metadata={"source": "harbor.md"}),
        Document(page_content=HOSTILE, id="lc-hostile", metadata={"source": "<evil>.md"}),
    ]
    r = (
        WiMChain(wim=tiny_wim)
        .with_margins()
        .invoke({"question": "Who keeps the lighthouse?", "context": docs})["result"]
    )
    tree = parse(r.to_html())
    starts = tree.find("span", "docstart")
    assert [s["text"].split("source")[0] for s in starts] == ["lc-harbor", "lc-hostile"]
    assert "harbor.md" in starts[0]["text"] and "<evil>.md" in starts[1]["text"]
    assert "lc-harbor" in tree.find("details", "sources")[0]["text"]


def test_llamaindex_nodes_show_their_ids_and_the_result_is_reachable(tiny_wim):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document

    from wim_integrations.llamaindex import WiMQueryEngine, wim_result

    engine = WiMQueryEngine.from_documents(
        [Document(text=SAMPLE, id_="li-harbor", metadata={"file": "harbor.md"})], tiny_wim
    )
    response = engine.query("Who keeps the lighthouse?")
    r = wim_result(response)
    assert r.answer == response.response and r.documents[0].id == "li-harbor"
    assert response.metadata["wim"]["result"]["answer"] == r.answer  # the JSON form is unchanged
    page = r.to_html()
    assert "li-harbor" in page and "harbor.md" in page
    with pytest.raises(WiMInputError, match="did not come from WiM"):
        wim_result(object())


def test_llamaindex_streaming_result_is_there_once_read(tiny_wim):
    pytest.importorskip("llama_index.core")
    from wim_integrations.llamaindex import WiMQueryEngine, wim_result

    engine = WiMQueryEngine.from_documents([SAMPLE], tiny_wim, streaming=True)
    response = engine.query("Who keeps the lighthouse?")
    with pytest.raises(WiMInputError, match="have not all been read"):
        wim_result(response)
    text = "".join(response.response_gen)
    assert wim_result(response).answer == text.strip()


def test_cli_writes_the_report(tiny_model_dirs, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(SAMPLE + "\n\n" + HOSTILE, encoding="utf-8")
    report = tmp_path / "report.html"
    model = str(tiny_model_dirs["llama"])
    args = ["ask", "-f", str(doc), "-q", "Who?", "-m", model, "--segment-tokens", "150", "--margin-tokens", "5"]
    code, out, err = run_cli(*args, "--answer-tokens", "5", "--quiet", "--html", str(report))
    assert code == 0, err
    assert f"Report written to {report}" in err
    page = report.read_text(encoding="utf-8")
    assert escape(out.strip()) in page and len(parse(page).find("section", "seg")) >= 3
    assert "&lt;script&gt;document.body.dataset.pwned" in page


def test_cli_rejects_a_bad_report_path_before_loading_a_model(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(SAMPLE, encoding="utf-8")
    bad = Path(tmp_path / "no-such-dir" / "r.html")
    code, _, err = run_cli("ask", "-f", str(doc), "-q", "Who?", "-m", "/no/model/here", "--html", str(bad))
    assert code == 2 and "no-such-dir" in err and "does not exist" in err
    assert "Loading" not in err  # refused before any model work


def test_a_summary_renders_with_its_instruction_and_notes(tiny_wim):
    result = tiny_wim.summarize(SAMPLE, "List the codes.", segment_tokens=150)
    page = result.to_html()
    assert ">Instruction<" in page and ">Summary<" in page and "List the codes." in page
    assert ">Question<" not in page
    assert page.count('class="margin') >= result.n_segments  # every note beside its segment
