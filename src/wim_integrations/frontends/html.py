"""A WiM run as a page a person reads: the document in its segments, each margin beside the segment it was written on.

`WiMResult.to_html()` and `WiMResult._repr_html_()` (Jupyter) call into this module. The page is self-contained: inline
CSS, no script, no network; collapsing uses `<details>`, which needs no JavaScript. Every piece of user or model text is
escaped, and the full page also forbids scripts with a Content-Security-Policy.

The renderer works on a `ReadingView`, not on `WiMResult` directly, so a run without a question (a future query-free
summary) can reuse it: it builds a view whose lead is its summary instead of a question and an answer.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..errors import WiMInputError
from ..events import ContextDocument, Margin, SegmentInfo, WiMResult

# Above this many segments, segments without a kept margin start collapsed (the kept ones stay open).
COLLAPSE_ABOVE_SEGMENTS = 12
_PREVIEW_CHARS = 160

_VERDICTS = {
    "yes": "verdict: yes",
    "no": "verdict: no",
    "unknown": "verdict: unclear",
    "unclassified": "not classified",
}


@dataclass(frozen=True)
class Lead:
    """A block at the top of the page: its label ("Question", "Answer", later "Summary") and its text."""

    label: str
    text: str
    emphasis: bool = False  # the main result (the answer), shown larger


@dataclass(frozen=True)
class ReadingView:
    """Everything the page shows, independent of the kind of run that produced it."""

    title: str
    leads: Sequence[Lead]
    context_text: str
    segments: Sequence[SegmentInfo]
    margins: Sequence[Margin]
    documents: Sequence[ContextDocument] = ()
    facts: Sequence[tuple[str, str]] = ()  # (label, value) pairs under the title
    used_label: str = "Answered from"  # how the kept margins relate to the lead: "Answered from", "Summarised from"
    notice: str | None = None  # e.g. why some segments are unread
    uid: str = field(default="wim")  # prefix of element ids, so two reports in one notebook do not collide


def view_of_result(result: WiMResult) -> ReadingView:
    """The reading view of a question-answering run."""
    t = result.timings
    kept = sum(m.relevant for m in result.margins)
    facts = [
        ("model", result.model or "unknown"),
        ("segments read", f"{result.segments_read} of {result.n_segments}"),
        ("margins kept", f"{kept} of {len(result.margins)}"),
        (
            "time",
            f"{t.total_seconds:.1f} s (read {t.prefill_seconds:.1f}, margins {t.margin_seconds:.1f}, "
            f"classify {t.classify_seconds:.1f}, answer {t.answer_seconds:.1f})",
        ),
        ("context", f"{result.tokens.context} tokens"),
    ]
    if t.context_cache != "off":
        facts.append(("document cache", t.context_cache))
    notice = None
    if result.stopped_early:
        notice = (
            f"Stopped early: the answer was asked for after {result.segments_read} of {result.n_segments} segments "
            "(answer_now). Segments after that were not read and have no margin."
        )
    segments = list(result.segments) or [  # results built without segment records: the margins' segments
        SegmentInfo(index=m.segment_index, char_span=m.char_span, token_span=m.token_span, read=True)
        for m in result.margins
    ]
    ids_from = f"{result.question}\0{result.answer}\0{result.context_text}".encode()
    digest = hashlib.sha1(ids_from, usedforsecurity=False).hexdigest()  # ids only, not security
    # A summary / analysis (WiMSummary) has an instruction where a question run has its question.
    instruction = getattr(result, "instruction", None)
    asked = Lead("Instruction", instruction) if instruction else Lead("Question", result.question)
    answer = Lead("Summary" if instruction else "Answer", result.answer, emphasis=True)
    return ReadingView(
        title=f"WiM: {asked.text}",
        leads=[asked, answer],
        context_text=result.context_text,
        segments=segments,
        margins=result.margins,
        documents=result.documents,
        facts=facts,
        notice=notice,
        uid=f"wim-{digest[:8]}",
    )


# -- public entry points ---------------------------------------------------------------------------------------------
def render_fragment(result: WiMResult | ReadingView) -> str:
    """The report as one `<div>` with its own scoped style: for Jupyter and for embedding in another page."""
    view = result if isinstance(result, ReadingView) else view_of_result(result)
    return f'<div class="wim-report" id="{view.uid}">\n<style>{_CSS}</style>\n{_body(view)}\n</div>'


def render_page(result: WiMResult | ReadingView) -> str:
    """The report as a complete HTML document."""
    view = result if isinstance(result, ReadingView) else view_of_result(result)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        # No script may run, whatever the text contains; styles are inline only.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(view.title)}</title>\n</head>\n"
        f'<body class="wim-page">\n{render_fragment(view)}\n</body>\n</html>\n'
    )


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Where a report may be written, checked before any run: an existing directory, not a directory itself."""
    name = os.fspath(path) if isinstance(path, str | os.PathLike) else path
    if not isinstance(name, str):
        raise WiMInputError(f"the HTML report path must be a str or a path, not {type(name).__name__}.")
    if not name or "\x00" in name:
        raise WiMInputError(f"the HTML report path {name!r} is empty or contains a NUL character; pass a file name.")
    p = Path(name)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        is_dir, parent_is_dir = p.is_dir(), parent.is_dir()
    except OSError as exc:  # a name the file system refuses (too long, ...)
        raise WiMInputError(f"cannot write the HTML report to {name!r}: {exc.strerror or exc}.") from exc
    if is_dir:
        raise WiMInputError(f"the HTML report path {str(p)!r} is a directory; pass a file name such as report.html.")
    if not parent_is_dir:
        raise WiMInputError(
            f"cannot write the HTML report to {str(p)!r}: the directory {str(parent)!r} does not exist; "
            "create it first or pick another path."
        )
    return p


def write_page(result: WiMResult | ReadingView, path: str | os.PathLike[str] | None = None) -> str:
    """The full page; also written to `path` (UTF-8) when given."""
    page = render_page(result)
    if path is not None:
        target = check_report_path(path)
        try:
            target.write_text(page, encoding="utf-8")
        except OSError as exc:  # permissions, a full disk, a name the file system refuses
            raise WiMInputError(f"cannot write the HTML report to {str(target)!r}: {exc.strerror or exc}.") from exc
    return page


# -- building blocks -------------------------------------------------------------------------------------------------
def _e(text: object) -> str:
    return _BIDI_CONTROLS.sub(_shown_control, escape(str(text), quote=True))


# Bidirectional embedding, override and isolate controls reorder the display of the text around them, so a report
# could show something other than what the model read or wrote: each is shown as its code point instead, inert.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _shown_control(m: re.Match[str]) -> str:
    return f"[U+{ord(m.group()):04X}]"


def _body(view: ReadingView) -> str:
    margins = {m.segment_index: m for m in view.margins}
    collapse = len(view.segments) > COLLAPSE_ABOVE_SEGMENTS
    parts = [_header(view), _outline(view)]
    if _show_documents(view.documents):
        parts.append(_sources(view.documents))
    if not view.context_text:
        parts.append(
            '<p class="notice">This result carries no context text (results rebuilt from JSON leave it out), so the '
            "segments below show their spans only.</p>"
        )
    rows = [_segment_row(view, seg, margins.get(seg.index), collapse) for seg in view.segments]
    parts.append('<main class="reading">\n<div class="colheads"><span>Document</span><span>Margins</span></div>\n')
    parts.append("\n".join(rows) + "\n</main>")
    return "\n".join(parts)


def _header(view: ReadingView) -> str:
    leads = "\n".join(
        f'<section class="lead{" main" if lead.emphasis else ""}"><h2>{_e(lead.label)}</h2>'
        f'<p class="lead-text">{_e(lead.text) if lead.text.strip() else "<em>(empty)</em>"}</p></section>'
        for lead in view.leads
    )
    kept = [m for m in view.margins if m.relevant]
    if kept:
        links = " ".join(
            f'<a class="cite" href="#{view.uid}-m{m.segment_index}">margin {m.segment_index + 1}</a>' for m in kept
        )
        plural = "s" if len(kept) != 1 else ""
        used = f'<p class="used">{_e(view.used_label)} {len(kept)} kept margin{plural}: {links}</p>'
    else:
        used = '<p class="used">No margin was kept: the answer comes from the context alone.</p>'
    facts = "".join(f"<li><span>{_e(k)}</span> {_e(v)}</li>" for k, v in view.facts)
    notice = f'<p class="notice">{_e(view.notice)}</p>' if view.notice else ""
    return (
        f'<header class="top">\n<p class="kicker">Writing in the Margins · reading report</p>\n{leads}\n{used}\n'
        f'<ul class="facts">{facts}</ul>\n{notice}\n</header>'
    )


def _mark(m: Margin) -> tuple[str, str]:
    """(css class, label) of a margin's verdict: kept or dropped, with its score when there is one."""
    cls = "kept" if m.relevant else "dropped"
    detail = f"score {m.score:.2f}" if m.score is not None else _VERDICTS.get(m.verdict, f"verdict: {m.verdict}")
    return cls, detail


def _outline(view: ReadingView) -> str:
    if not view.margins:
        return ""
    kept = sum(m.relevant for m in view.margins)
    rows = []
    for m in view.margins:
        cls, detail = _mark(m)
        rows.append(
            f'<li class="{cls}"><a href="#{view.uid}-s{m.segment_index}">§{m.segment_index + 1}</a>'
            f'<span class="pill {cls}">{cls}</span><span class="detail">{_e(detail)}</span>'
            f'<span class="gist">{_e(" ".join(m.text.split())) or "<em>(empty)</em>"}</span></li>'
        )
    return (
        f'<details class="outline" open><summary>Margins at a glance: {kept} kept of {len(view.margins)}</summary>\n'
        f"<ol>{''.join(rows)}</ol></details>"
    )


def _show_documents(docs: Sequence[ContextDocument]) -> bool:
    return len(docs) > 1 or any(d.id or d.metadata for d in docs)


def _doc_name(doc: ContextDocument) -> str:
    return doc.id or f"document {doc.index + 1}"


def _metadata(meta: Mapping[str, Any]) -> str:
    return "".join(f'<span class="kv"><span class="k">{_e(k)}</span> {_e(v)}</span>' for k, v in meta.items())


def _sources(docs: Sequence[ContextDocument]) -> str:
    rows = "".join(
        f'<tr><td>{d.index + 1}</td><td class="docid">{_e(_doc_name(d))}</td>'
        f"<td>{d.char_span[1] - d.char_span[0]:,} chars</td><td>{_metadata(d.metadata)}</td></tr>"
        for d in docs
    )
    return (
        f'<details class="sources" open><summary>Sources: {len(docs)} document{"s" if len(docs) != 1 else ""}'
        f"</summary>\n<table><tr><th>#</th><th>id</th><th>length</th><th>metadata</th></tr>{rows}</table></details>"
    )


def _segment_text(view: ReadingView, seg: SegmentInfo) -> str:
    """The segment's text, escaped, with a label where a document starts inside it."""
    a, b = seg.char_span
    text = view.context_text
    if not text:
        return f'<p class="missing">characters {a:,}–{b:,}</p>'
    labelled = _show_documents(view.documents)
    cuts = sorted({a, b, *(d.char_span[0] for d in view.documents if labelled and a <= d.char_span[0] < b)})
    starts = {d.char_span[0]: d for d in view.documents} if labelled else {}
    out = []
    for lo, hi in itertools.pairwise(cuts):
        doc = starts.get(lo)
        if doc is not None:
            out.append(
                f'<span class="docstart"><span class="docid">{_e(_doc_name(doc))}</span>{_metadata(doc.metadata)}'
                "</span>"
            )
        piece = text[lo:hi]
        if piece.strip():
            out.append(f'<span class="t">{_e(piece.strip(chr(10)))}</span>')
    return "".join(out)


def _segment_row(view: ReadingView, seg: SegmentInfo, margin: Margin | None, collapse: bool) -> str:
    n = seg.index + 1
    if margin is not None:
        state, _ = _mark(margin)
    else:
        state = "read-only" if seg.read else "unread"
    head_bits = [f"segment {n} of {len(view.segments)}", f"tokens {seg.token_span[0]:,}–{seg.token_span[1]:,}"]
    if seg.read:
        head_bits.append(f"read in {seg.seconds:.2f} s")
    docs = [d for d in view.documents if d.char_span[0] < seg.char_span[1] and seg.char_span[0] < d.char_span[1]]
    if _show_documents(view.documents) and docs:
        head_bits.append("from " + ", ".join(_doc_name(d) for d in docs))
    preview = " ".join(view.context_text[seg.char_span[0] : seg.char_span[1]].split())
    opened = " open" if not collapse or state == "kept" else ""
    text = (
        f'<details class="segtext"{opened}><summary><span class="seghead">{_e(" · ".join(head_bits))}</span>'
        f'<span class="preview">{_e(preview[:_PREVIEW_CHARS])}{"…" if len(preview) > _PREVIEW_CHARS else ""}</span>'
        f'</summary><div class="body">{_segment_text(view, seg)}</div></details>'
    )
    return (
        f'<section class="seg {state}" id="{view.uid}-s{seg.index}" data-segment="{seg.index}">\n'
        f'<div class="text">{text}</div>\n{_margin_cell(view, seg, margin)}\n</section>'
    )


def _margin_cell(view: ReadingView, seg: SegmentInfo, m: Margin | None) -> str:
    if m is None:
        if seg.read:
            what = "Read, no margin: the answer was asked for right after this segment."
        else:
            what = "Not read: the answer was asked for before this segment."
        state, pill = ("read-only", "read") if seg.read else ("unread", "unread")
        return (
            f'<aside class="margin {state}" data-segment="{seg.index}"><p class="mark">'
            f'<span class="pill {state}">{pill}</span></p><p class="note">{what}</p></aside>'
        )
    cls, detail = _mark(m)
    body = _e(m.text) if m.text.strip() else "<em>(empty margin)</em>"
    return (
        f'<aside class="margin {cls}" id="{view.uid}-m{m.segment_index}" data-segment="{m.segment_index}">'
        f'<p class="mark"><span class="pill {cls}">{cls}</span><span class="detail">{_e(detail)}</span></p>'
        f'<p class="mtext">{body}</p><p class="mfoot">margin {seg.index + 1} · {m.n_tokens} tokens · '
        f"{m.seconds:.2f} s</p></aside>"
    )


_CSS = """
.wim-page{margin:0;background:#f4f1ea}
.wim-report{--ink:#1f2328;--muted:#6b6f76;--paper:#fffdf8;--line:#e2ddd0;--kept:#1f7a4d;--kept-bg:#e7f4ec;
 --drop:#8a8f98;--drop-bg:#f1f1ef;--unread:#b8b2a5;--accent:#7a4b12;
 color:var(--ink);background:#f4f1ea;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 max-width:1180px;margin:0 auto;padding:24px 28px 48px;box-sizing:border-box}
.wim-report *{box-sizing:border-box}
.wim-report a{color:var(--accent)}
.wim-report .top{background:var(--paper);border:1px solid var(--line);border-radius:10px;padding:18px 24px;
 margin-bottom:16px}
.wim-report .kicker{margin:0 0 6px;font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted)}
.wim-report .lead{margin:0 0 8px}
.wim-report .lead h2{margin:0;font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.wim-report .lead-text{margin:2px 0 0;font-size:17px;white-space:pre-wrap;overflow-wrap:anywhere}
.wim-report .lead.main .lead-text{font:21px/1.4 Georgia,"Times New Roman",serif;border-left:4px solid var(--kept);
 padding:4px 0 4px 12px}
.wim-report .used{margin:10px 0 6px;color:var(--muted)}
.wim-report .cite{display:inline-block;margin:0 2px;padding:0 8px;border-radius:10px;background:var(--kept-bg);
 color:var(--kept);text-decoration:none;font-weight:600;font-size:13px}
.wim-report .facts{list-style:none;margin:8px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px}
.wim-report .facts span{color:var(--muted)}
.wim-report .notice{margin:10px 0 0;padding:8px 12px;border-radius:6px;background:#fff4d6;border:1px solid #ecd9a4}
.wim-report details>summary{cursor:pointer}
.wim-report .outline,.wim-report .sources{background:var(--paper);border:1px solid var(--line);border-radius:10px;
 padding:10px 18px;margin-bottom:16px}
.wim-report .outline summary,.wim-report .sources summary{font-weight:600}
.wim-report .outline ol{list-style:none;margin:8px 0 0;padding:0}
.wim-report .outline li{display:grid;grid-template-columns:44px 78px 120px minmax(0,1fr);align-items:center;
 gap:8px;padding:3px 0;border-top:1px solid #f0ece2;font-size:13px}
.wim-report .outline li.dropped{color:var(--drop)}
.wim-report .outline .gist{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.wim-report .sources table{border-collapse:collapse;margin-top:8px;font-size:13px;width:100%}
.wim-report .sources td,.wim-report .sources th{text-align:left;padding:3px 10px 3px 0;vertical-align:top;
 border-top:1px solid #f0ece2}
.wim-report .kv{display:inline-block;margin:0 10px 0 0;color:var(--muted)}
.wim-report .kv .k{font-weight:600;color:var(--ink)}
.wim-report .docid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
.wim-report .pill{display:inline-block;min-width:58px;text-align:center;padding:1px 8px;border-radius:10px;
 font-size:11.5px;font-weight:700;text-transform:uppercase;letter-spacing:.05em}
.wim-report .pill.kept{background:var(--kept);color:#fff}
.wim-report .pill.dropped{background:#d9d9d5;color:#555a62}
.wim-report .pill.read-only,.wim-report .pill.unread{background:transparent;color:var(--muted);
 border:1px dashed var(--unread)}
.wim-report .colheads{display:grid;grid-template-columns:minmax(0,1fr) 340px;gap:28px;padding:0 4px 4px;
 font-size:12px;text-transform:uppercase;letter-spacing:.08em;color:var(--muted)}
.wim-report .seg{display:grid;grid-template-columns:minmax(0,1fr) 340px;gap:28px;align-items:start;
 border-top:1px dashed #cfc8b8;padding:14px 4px}
.wim-report .seg .text{background:var(--paper);border:1px solid var(--line);border-radius:8px;padding:10px 18px}
.wim-report .seghead{display:block;font-size:12px;color:var(--muted);letter-spacing:.02em}
.wim-report .segtext>summary{list-style-position:outside;margin-left:14px}
.wim-report .preview{display:block;color:var(--muted);font-style:italic;white-space:nowrap;overflow:hidden;
 text-overflow:ellipsis}
.wim-report .segtext[open] .preview{display:none}
.wim-report .body{font:15.5px/1.65 Georgia,"Times New Roman",serif;white-space:pre-wrap;overflow-wrap:anywhere;
 margin-top:6px}
.wim-report .body .t{display:block}
.wim-report .docstart{display:block;margin:8px 0 4px;padding:3px 8px;border-radius:5px;background:#efe9db;
 font:12.5px/1.5 system-ui,sans-serif;white-space:normal}
.wim-report .docstart .docid{font-weight:700;margin-right:10px}
.wim-report .missing{color:var(--muted);font-style:italic;margin:6px 0 0}
.wim-report .margin{position:sticky;top:8px;border-radius:8px;padding:10px 14px;font-size:14px;
 border-left:4px solid var(--drop);background:var(--drop-bg)}
.wim-report .margin.kept{border-left-color:var(--kept);background:var(--kept-bg)}
.wim-report .margin.dropped{color:#5d626a}
.wim-report .margin.read-only,.wim-report .margin.unread{background:transparent;border:1px dashed var(--unread);
 color:var(--muted)}
.wim-report .margin p{margin:0}
.wim-report .mark{display:flex;gap:8px;align-items:center;margin-bottom:6px!important;font-size:12px}
.wim-report .detail{color:var(--muted);font-size:12px}
.wim-report .mtext{white-space:pre-wrap;overflow-wrap:anywhere;font-style:italic}
.wim-report .margin.kept .mtext{font-style:normal}
.wim-report .mfoot{margin-top:6px!important;font-size:11.5px;color:var(--muted)}
.wim-report .note{font-size:13px}
.wim-report .seg.unread .text{opacity:.55}
.wim-report .seg.dropped .body{color:#3d4148}
@media (max-width:760px){.wim-report .seg,.wim-report .colheads{grid-template-columns:1fr}
 .wim-report .margin{position:static}.wim-report .colheads span+span{display:none}}
"""
