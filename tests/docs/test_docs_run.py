"""Every Python block in README.md and docs/*.md runs as written.

A block runs on its own, in a fresh namespace: it imports what it uses. Sample data a page's prose introduces
(`long_text`, `docs`, an `index`...) is named on the line before the block, `<!-- doc-test: given long_text, docs -->`,
and comes from `GIVEN` below. A block that cannot run here says why: `<!-- doc-test: skip (reason) -->`.

`WiM.default()` (and so `WiMChain.default()`, `ChatWiM()`, `WiMLLM()`...) loads the tiny random-weight Llama of
tests/conftest.py instead of the embedded model: these tests prove the code on the pages is right (names, imports,
signatures, return values), in seconds; what the embedded model writes is tested in the `slow` tests.
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HARBOR = (ROOT / "examples" / "harbor_report.txt").read_text(encoding="utf-8")
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"
_MARKER = re.compile(r"<!--\s*doc-test:\s*(given|skip)\b(.*?)-->")


def _blocks() -> list[Any]:
    """One pytest param per ```python block: (page, line, code, given names); skipped blocks carry their reason."""
    params = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() != "```python":
                i += 1
                continue
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            marker = _MARKER.search(lines[i - 1]) if i > 0 else None
            given: list[str] = []
            marks: list[Any] = []
            if marker and marker.group(1) == "skip":
                marks.append(pytest.mark.skip(reason=marker.group(2).strip(" ()") or "marked skip"))
            elif marker:
                given = [n.strip() for n in marker.group(2).split(",") if n.strip()]
            code = textwrap.dedent("\n".join(lines[start:end]))  # blocks inside a list item are indented
            name = f"{page.relative_to(ROOT)}:{start + 1}"
            params.append(pytest.param(page, start + 1, code, given, id=name, marks=marks))
            i = end + 1
    return params


def _paragraphs() -> list[str]:
    return [p for p in HARBOR.split("\n\n") if p.strip()]


# The sample data pages refer to: name -> builder(namespace so far). Builders may use names built before them.
def _wim(ns: dict[str, Any]) -> Any:
    from wim_integrations import WiM

    return WiM.default()


def _lc_docs(ns: dict[str, Any]) -> Any:
    from langchain_core.documents import Document

    return [
        Document(page_content=p, metadata={"source": "harbor_report.txt", "part": i})
        for i, p in enumerate(_paragraphs())
    ]


def _chain(ns: dict[str, Any]) -> Any:
    from wim_integrations import WiMChain

    return WiMChain.default()


def _embeddings(ns: dict[str, Any]) -> Any:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    return DeterministicFakeEmbedding(size=32)  # stands for the user's embedding model


def _base_retriever(ns: dict[str, Any]) -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    return InMemoryVectorStore.from_documents(_lc_docs(ns), _embeddings(ns)).as_retriever()


def _li_documents(ns: dict[str, Any]) -> Any:
    from llama_index.core import Document

    return [Document(text=p, metadata={"part": i}) for i, p in enumerate(_paragraphs())]


def _index(ns: dict[str, Any]) -> Any:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    return VectorStoreIndex.from_documents(_li_documents(ns), embed_model=MockEmbedding(embed_dim=16))


def _summary_index(ns: dict[str, Any]) -> Any:
    from llama_index.core import SummaryIndex

    return SummaryIndex.from_documents(_li_documents(ns))


def _schema(name: str, **fields: Any) -> Callable[[dict[str, Any]], Any]:
    def build(ns: dict[str, Any]) -> Any:
        from pydantic import create_model

        return create_model(name, **fields)

    return build


def _reader(ns: dict[str, Any]) -> Any:
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(lambda prompt_value: prompt_value.to_string()[-200:])  # stands for the user's own model


def _prompt(ns: dict[str, Any]) -> Any:
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")


def _wim_query_engine(ns: dict[str, Any]) -> Any:
    from wim_integrations.llamaindex import WiMQueryEngine

    return WiMQueryEngine.from_documents(_li_documents(ns), _wim(ns))


GIVEN: dict[str, Callable[[dict[str, Any]], Any]] = {
    "wim": _wim,
    "long_text": lambda ns: HARBOR,
    "contract": lambda ns: HARBOR,
    "document_text": lambda ns: HARBOR,
    "docs": _lc_docs,
    "x": lambda ns: {"context": HARBOR, "question": QUESTION},
    "q": lambda ns: QUESTION,
    "base_retriever": _base_retriever,
    "format_docs": lambda ns: lambda docs: "\n\n".join(d.page_content for d in docs),
    "prompt": _prompt,
    "any_other_reader": _reader,
    "Obligation": _schema("Obligation", what=(str, ...), deadline=(str, "")),
    "Deadline": _schema("Deadline", what=(str, ...), date=(str, "")),
    "documents": _li_documents,
    "index": _index,
    "summary_index": _summary_index,
    "retriever": lambda ns: _index(ns).as_retriever(similarity_top_k=4),
    "nodes": lambda ns: _index(ns).as_retriever(similarity_top_k=4).retrieve(QUESTION),
    "engine": _wim_query_engine,
    "chain": _chain,
    "embeddings": _embeddings,
}


@pytest.fixture
def tiny_default(tiny_backends, monkeypatch, tmp_path):
    """`WiM.default()` on the tiny Llama with small budgets; files the blocks write land in a temporary folder."""
    from wim_integrations import engine, models

    monkeypatch.setattr(models, "load_default_backend", lambda progress=None, **options: tiny_backends["llama"])
    monkeypatch.setattr(engine, "_default_wims", {})
    monkeypatch.setattr(engine, "_default_backends", {})
    monkeypatch.chdir(tmp_path)
    try:
        from llama_index.core import Settings
    except ImportError:
        yield
        return
    saved = Settings._llm, Settings._embed_model
    yield
    Settings._llm, Settings._embed_model = saved


@pytest.mark.parametrize(("page", "line", "code", "given"), _blocks())
def test_block_runs_as_written(
    page: Path, line: int, code: str, given: list[str], tiny_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = [n for n in given if n not in GIVEN]
    assert not unknown, f"{page.name}:{line} is given {unknown}, which GIVEN does not define"
    # A module of its own, as a user's script is: libraries that resolve annotations through sys.modules (LangGraph's
    # state schemas) find the block's names.
    module = types.ModuleType("doc_block")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for name in given:
        namespace[name] = GIVEN[name](namespace)
    compiled = compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    outcome = eval(compiled, namespace)  # a coroutine where the block awaits at top level
    if asyncio.iscoroutine(outcome):
        asyncio.run(outcome)


def test_every_page_with_python_has_its_blocks_collected() -> None:
    """The collector sees every block (a fence it misread would silently leave a block untested)."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found = sum(1 for p in _blocks() if p.values[0] == page)
        assert found == text.count("```python"), page
