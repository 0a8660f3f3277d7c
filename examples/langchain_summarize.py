"""Summarise a long report with WiM instead of a map-reduce summarisation chain.

    python examples/langchain_summarize.py

The usual LangChain recipe splits the text and summarises each chunk blind to the rest (map), then merges the
partial summaries (reduce):

    split = RecursiveCharacterTextSplitter(chunk_size=2000).split_documents(docs)
    map_chain = ChatPromptTemplate.from_template("Summarise:\\n{text}") | llm | StrOutputParser()
    reduce_chain = ChatPromptTemplate.from_template("Combine these summaries:\\n{text}") | llm | StrOutputParser()
    summary = reduce_chain.invoke({"text": "\\n\\n".join(map_chain.batch([{"text": d.page_content} for d in split]))})

WiM reads the document once, in order: after each part the model writes a note with everything before it in its
cache, and the summary is written from the whole document plus all the notes. One Runnable, same input documents:
"""

from __future__ import annotations

from pathlib import Path

from langchain_core.documents import Document

from wim_integrations import WiMChain

REPORT = Path(__file__).with_name("harbor_report.txt")


def main() -> None:
    docs = [
        Document(page_content=REPORT.read_text(encoding="utf-8"), id="harbor_report", metadata={"source": "harbor"})
    ]
    chain = WiMChain.default(segment_tokens=256, margin_max_new_tokens=48, max_tokens=160, margin_batch_size=8)
    result = chain.with_margins().invoke({"context": docs, "summarize": True})["result"]
    for note in result.notes:
        source = ", ".join(f"{d.doc_id}[{d.start_char}:{d.end_char}]" for d in note.documents)
        print(f"Note {note.segment_index + 1}/{result.n_segments} <- {source}: {' '.join(note.text.split())}")
    print(f"Summary: {result.summary}")
    # An analysis instead of a summary: the instruction guides both the notes and the report.
    print("Names:", chain.invoke({"context": docs, "analyze": "List every person named and their role."}))


if __name__ == "__main__":
    main()
