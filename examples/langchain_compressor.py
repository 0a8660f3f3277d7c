"""WiM as a document filter in front of a different reader, on the embedded SmolLM2 model.

    pip install langchain-classic      # ContextualCompressionRetriever
    python examples/langchain_compressor.py

`ContextualCompressionRetriever` runs `WiMDocumentCompressor` on the retrieved documents: WiM writes a margin per
segment (no answer), and only the documents under relevant margins go on, with the margin in their metadata. The
reader after it is not WiM: a plain prompt answered by the same model with `transformers`' `generate`, reading only
the kept documents. SmolLM2-135M is too small to judge its margins (docs/architecture.md, Limitations), so this
example keeps margins whose verdict could not be parsed (`keep_unknown_verdicts=True`) and drops only the explicit
"no"s; with a larger model, leave the default.
"""

from __future__ import annotations

import torch
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_lcel_rag import DOCUMENTS, QUESTION, embeddings  # the same documents and embeddings

from wim_integrations import WiM
from wim_integrations.langchain import WiMDocumentCompressor


def plain_reader(wim: WiM, max_new_tokens: int = 48) -> RunnableLambda:
    """A reader without WiM: the kept documents and the question in one chat prompt, greedy `generate`."""
    tokenizer, model = wim.backend.tokenizer, wim.backend.model

    def read(inputs: dict) -> str:
        sources = "\n\n".join(d.page_content for d in inputs["context"]) or "(no documents were kept)"
        messages = [{"role": "user", "content": f"{sources}\n\nAnswer briefly: {inputs['question']}"}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    return RunnableLambda(read, name="PlainReader")


def main() -> None:
    wim = WiM.default()
    store = InMemoryVectorStore(embeddings())
    store.add_documents(DOCUMENTS)
    retriever = ContextualCompressionRetriever(
        # segments must hold the 106-token margin prompt on SmolLM2: about two of these short documents each
        base_compressor=WiMDocumentCompressor(
            wim=wim, segment_tokens=128, margin_max_new_tokens=32, keep_unknown_verdicts=True
        ),
        base_retriever=store.as_retriever(search_kwargs={"k": 4}),
    )
    kept: list[Document] = retriever.invoke(QUESTION)
    print(f"Question: {QUESTION}")
    print(f"Kept {len(kept)} of {len(DOCUMENTS)} retrieved documents:")
    for d in kept:
        verdicts, margin = ", ".join(d.metadata["wim_verdict"]), " ".join(d.metadata["wim_margin"].split())
        hop = f" (hop {d.metadata['wim_hop']}: kept given the others)" if "wim_hop" in d.metadata else ""
        print(f"  {d.metadata['source']} [{verdicts}]{hop}: {margin}")

    rag = {"context": retriever, "question": RunnablePassthrough()} | plain_reader(wim)
    print(f"Answer (plain reader): {rag.invoke(QUESTION)}")


if __name__ == "__main__":
    main()
