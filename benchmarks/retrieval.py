"""Retrieved pieces, one or two holding the fact: which pieces do the WiM document filters keep?

    python -m benchmarks.retrieval [--ks 4 8] [--seeds 6] [--model default] [--out results.jsonl]
    python -m benchmarks.retrieval --report results.jsonl     # the table of a results file

Each task is what a retriever hands a reader: k short paragraphs of village filler (`tasks.filler_sentence`), 60-110
tokens each, in random order. In a `needle` task one paragraph holds a secret code; in a `two_hop` task one holds who
received an item and another where that person lives. Facts use words that never occur in the filler. Systems, one
model, greedy, no document cache (each system's time is a first read):

- `none`: no filter, every piece kept;
- `compressor`: LangChain's `WiMDocumentCompressor` with default settings (every piece a segment of its own);
- `postprocessor`: LlamaIndex's `WiMNodePostprocessor` with default settings.

Then the same plain reader (one chat turn: the kept pieces, the question; 20 tokens) answers from what each kept.
Reported per (k, system): recall of the holding pieces, share of pieces kept, tasks whose holding pieces were all
kept, answer accuracy (the gold code / town named) and seconds (filter only; the reader's time apart).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from wim_integrations import WiM
from wim_integrations.backends.base import Backend, GenerationRequest

from .runner import machine_facts
from .scoring import mentions
from .tasks import _COLORS, _ITEMS, _NAMES, _VAULTS, TokenCounter, filler_sentence, invented_word

SYSTEMS = ("none", "compressor", "postprocessor")
KINDS = ("needle", "two_hop")


@dataclass(frozen=True)
class RetrievalTask:
    id: str
    pieces: tuple[str, ...]
    holding: tuple[int, ...]  # indices of the pieces that hold the facts
    question: str
    answer: str


def _paragraph(rng: random.Random, count: TokenCounter, fact: str | None) -> str:
    """Filler of 60-110 tokens; `fact` at a random sentence position."""
    goal = rng.randint(60, 110)
    sentences: list[str] = []
    while count(" ".join(sentences)) < goal:
        sentences.append(filler_sentence(rng))
    if fact is not None:
        sentences.insert(rng.randint(0, len(sentences)), fact)
    return " ".join(sentences)


def make_task(count: TokenCounter, kind: str, k: int, seed: int) -> RetrievalTask:
    rng = random.Random(f"retrieval|{kind}|{k}|{seed}")
    if kind == "needle":
        key = f"{rng.choice(_COLORS)} {rng.choice(_VAULTS)}"
        code = str(rng.randint(1000, 9999))
        facts = [f"The secret code for the {key} is {code}."]
        question, answer = f"What is the secret code for the {key}? Answer with the code only.", code
    else:
        giver, receiver = rng.sample(_NAMES, 2)
        item, town = rng.choice(_ITEMS), invented_word(rng).capitalize()
        facts = [f"{giver} gave the {item} to {receiver}.", f"{receiver} lives in the town of {town}."]
        question = (
            f"{giver} gave the {item} to someone. In which town does that person live? Answer with the town only."
        )
        answer = town
    holding = sorted(rng.sample(range(k), len(facts)))
    by_piece = dict(zip(holding, facts, strict=True))
    pieces = tuple(_paragraph(rng, count, by_piece.get(i)) for i in range(k))
    return RetrievalTask(f"{kind}-k{k}-s{seed}", pieces, tuple(holding), question, answer)


def _compressor(wim: WiM, task: RetrievalTask) -> list[int]:
    from langchain_core.documents import Document

    from wim_integrations.langchain import WiMDocumentCompressor

    docs = [Document(page_content=p, id=str(i)) for i, p in enumerate(task.pieces)]
    kept = WiMDocumentCompressor(wim=wim).compress_documents(docs, task.question)
    return [int(d.id or -1) for d in kept]


def _postprocessor(wim: WiM, task: RetrievalTask) -> list[int]:
    from llama_index.core.schema import NodeWithScore, TextNode

    from wim_integrations.llamaindex import WiMNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(id_=str(i), text=p), score=1.0) for i, p in enumerate(task.pieces)]
    kept = WiMNodePostprocessor(wim).postprocess_nodes(nodes, query_str=task.question)
    return [int(n.node.node_id) for n in kept]


def _answer(backend: Backend, pieces: Sequence[str], question: str) -> str:
    """The plain reader: one chat turn with the kept pieces and the question, from an empty cache."""
    body = "\n\n".join(pieces) + f"\n\nQuestion: {question}" if pieces else f"Question: {question}"
    ids = backend.chat_frame().user_turn_ids(backend, body)
    out = list(backend.generate(backend.new_cache(), GenerationRequest(ids, 20)))
    return backend.decode(out).strip()


def run(
    wim: WiM, ks: Sequence[int], seeds: int, out: Path | None, kinds: Sequence[str] = KINDS
) -> list[dict[str, Any]]:
    b = wim.backend

    def count(text: str) -> int:
        return len(b.encode_text(text))

    records = []
    for k in ks:
        for kind in kinds:
            for seed in range(seeds):
                task = make_task(count, kind, k, seed)
                for system in SYSTEMS:
                    t0 = time.perf_counter()
                    if system == "none":
                        kept = list(range(k))
                    elif system == "compressor":
                        kept = _compressor(wim, task)
                    else:
                        kept = _postprocessor(wim, task)
                    seconds = time.perf_counter() - t0
                    prediction = _answer(b, [task.pieces[i] for i in kept], task.question)
                    rec = {
                        "task": task.id,
                        "kind": kind,
                        "k": k,
                        "system": system,
                        "kept": kept,
                        "holding": list(task.holding),
                        "recall": sum(i in kept for i in task.holding) / len(task.holding),
                        "kept_share": len(kept) / k,
                        "correct": mentions(prediction, task.answer),
                        "prediction": prediction,
                        "seconds": seconds,
                    }
                    records.append(rec)
                    print(json.dumps(rec), file=sys.stderr, flush=True)
                    if out is not None:
                        with out.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
    return records


def table(records: Sequence[dict[str, Any]]) -> str:
    """Per k, per kind (and all kinds together), per system."""
    lines = [
        "| k | kind | system | tasks | recall of holding pieces | all holding kept | pieces kept | answer accuracy "
        "| filter s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted({r["k"] for r in records}):
        for kind in [*KINDS, "all"]:
            for system in SYSTEMS:
                rs = [r for r in records if r["k"] == k and r["system"] == system and kind in (r["kind"], "all")]
                if not rs:
                    continue
                lines.append(
                    f"| {k} | {kind} | {system} | {len(rs)} | {mean(r['recall'] for r in rs):.2f} | "
                    f"{mean(r['recall'] == 1 for r in rs):.2f} | {mean(r['kept_share'] for r in rs):.2f} | "
                    f"{mean(bool(r['correct']) for r in rs):.2f} | {mean(r['seconds'] for r in rs):.1f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, default=6, help="tasks per (k, kind)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--model", default="default", help="local model dir; 'default' = embedded SmolLM2")
    parser.add_argument("--out", type=Path, default=None, help="append each record (JSON lines) here")
    parser.add_argument("--report", type=Path, default=None, help="print the table of this results file and exit")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(table([json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]))
        return 0
    wim = WiM.default() if args.model == "default" else WiM.from_pretrained(args.model)
    wim = wim.with_options(document_cache=None)  # every system's time is a first read
    records = run(wim, args.ks, args.seeds, args.out, args.kinds)
    print(f"model {wim.model_name}; {machine_facts()}")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
