"""Retrieved pieces, one or two holding the fact: which pieces do the WiM document filters keep?

    python -m benchmarks.retrieval [--ks 4 8] [--seeds 6] [--model default] [--out results.jsonl]
    python -m benchmarks.retrieval --report results.jsonl [more.jsonl] [--seed-list S ...] [--systems ...]   # tables

Each task is what a retriever hands a reader: k short paragraphs of village filler (`tasks.filler_sentence`), 60-110
tokens each, in random order. In a `needle` task one paragraph holds a secret code; in a `two_hop` task one holds who
received an item and another where that person lives. Facts use words that never occur in the filler. Systems, one
model, greedy, no document cache (each system's time is a first read):

- `none`: no filter, every piece kept;
- `chain_filter`: LangChain's `LLMChainFilter` (langchain-classic, its default YES/NO prompt and parser) on a plain
  chat model over the same backend (`PlainChat` below: one chat turn, greedy, no WiM reading); a reply with neither
  YES nor NO counts as NO (LangChain's parser would raise and fail the whole call);
- `chain_filter_prob`: the same `LLMChainFilter` and prompt, the decision taken from the next-token distribution
  instead of a decoded reply: YES when P(YES) > P(NO) (each summed over its spellings' first tokens), the way
  `classification="calibrated"` reads a reply; a stronger baseline on a model that answers "No" to almost anything;
- `compressor`: LangChain's `WiMDocumentCompressor` judging by the margins alone (`hops=1`, the default before the
  later hops; otherwise default settings: every piece a segment of its own);
- `postprocessor`: LlamaIndex's `WiMNodePostprocessor`, the same (`hops=1`);
- `compressor_hops` / `postprocessor_hops`: the same with `hops=2`, their default now (the pieces the margins dropped
  judged again given the kept ones, `filtering.follow_hops`; `--hop-threshold` sets its threshold). Records
  hold the pieces the margins alone kept (`margin_kept`), each piece's evidence lift (`lifts`, None for pieces the
  margins kept) and the seconds of the hop pass (`hop_seconds`, part of `seconds`).

Then the same plain reader (one chat turn: the kept pieces, the question; 20 tokens) answers from what each kept.
Reported per (k, system): recall of the holding pieces, share of pieces kept, tasks whose holding pieces were all
kept, answer accuracy (the gold code / town named) and seconds (filter only; the reader's time apart). Records also
hold each piece's score (`piece_scores`: the compressor's best margin score on the piece, the YES/NO log-odds of the
probability baseline) so other keep rules can be compared on the same reads.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from wim_integrations import WiM
from wim_integrations.backends.base import Backend, GenerationRequest
from wim_integrations.events import Margin
from wim_integrations.filtering import DEFAULT_HOP_THRESHOLD, DocumentJudgement, judge_documents

from .runner import machine_facts
from .scoring import mentions
from .tasks import _COLORS, _ITEMS, _NAMES, _VAULTS, TokenCounter, filler_sentence, invented_word

SYSTEMS = (
    "none",
    "holding_only",  # not a filter: exactly the pieces that hold the facts, what a perfect filter would keep
    "chain_filter",
    "chain_filter_prob",
    "compressor",
    "postprocessor",
    "compressor_hops",
    "postprocessor_hops",
)
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


@dataclass
class Filtered:
    kept: list[int]
    piece_scores: list[float | None] | None = None  # per piece, in retrieval order
    notes: list[str] | None = None  # per piece: its margins, or the chain filter's reply
    extra: dict[str, Any] | None = None  # more fields for the record (the hops' systems)


def _hop_fields(judged: Sequence[DocumentJudgement], seconds: float) -> dict[str, Any]:
    """What the later hops did: the pieces the margins kept, each piece's evidence lift, the hops' seconds."""
    return {
        "margin_kept": [j.index for j in judged if any(m.relevant for m in j.margins)],
        "lifts": [j.lift for j in sorted(judged, key=lambda j: j.index)],
        "hop_seconds": seconds,
    }


def _compressor(wim: WiM, task: RetrievalTask, hops: int = 1, hop_threshold: float = DEFAULT_HOP_THRESHOLD) -> Filtered:
    from langchain_core.documents import Document

    from wim_integrations.langchain import WiMDocumentCompressor

    seen: list[list[Margin]] = []
    judged_seen: list[tuple[list[DocumentJudgement], float]] = []

    class Recording(WiMDocumentCompressor):  # the margins and judgements the compressor kept by, for the record
        def _judge(self, documents: Sequence[Document], margins: list[Margin], query: str) -> list[DocumentJudgement]:
            seen.append(margins)
            t0 = time.perf_counter()
            judged = super()._judge(documents, margins, query)
            judged_seen.append((judged, time.perf_counter() - t0))
            return judged

    docs = [Document(page_content=p, id=str(i)) for i, p in enumerate(task.pieces)]
    kept = Recording(wim=wim, hops=hops, hop_threshold=hop_threshold).compress_documents(docs, task.question)
    judged = judge_documents(seen[0], len(docs))
    scores = [max((m.score for m in j.margins if m.score is not None), default=None) for j in judged]
    notes = [" | ".join(m.text for m in j.margins) for j in judged]
    extra = _hop_fields(*judged_seen[0]) if hops > 1 else None
    return Filtered([int(d.id or -1) for d in kept], scores, notes, extra)


class PlainChat:
    """Builds a plain LangChain chat model over a WiM backend: the conversation in the model's chat template, greedy
    decoding from an empty cache, no margins. Only what `LLMChainFilter` needs (the project has no such model)."""

    @staticmethod
    def model(backend: Backend, max_tokens: int = 8) -> Any:
        from langchain_core.language_models import BaseChatModel
        from langchain_core.messages import AIMessage, BaseMessage
        from langchain_core.outputs import ChatGeneration, ChatResult

        lock = threading.Lock()  # LLMChainFilter batches in threads; one backend decodes one sequence at a time

        class _Plain(BaseChatModel):
            @property
            def _llm_type(self) -> str:
                return "plain-wim-backend"

            def _generate(
                self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None, **kw: Any
            ) -> ChatResult:
                ids = plain_prompt_ids(backend, messages)
                with lock:
                    out = list(backend.generate(backend.new_cache(), GenerationRequest(ids, max_tokens)))
                return ChatResult(generations=[ChatGeneration(message=AIMessage(content=backend.decode(out)))])

        return _Plain()


def plain_prompt_ids(backend: Backend, messages: Sequence[Any]) -> list[int]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    rendered = backend.render_chat([{"role": roles.get(m.type, "user"), "content": str(m.content)} for m in messages])
    return backend.encode_template(rendered)


_YES = ("YES", "Yes", "yes", " YES", " Yes", " yes")
_NO = ("NO", "No", "no", " NO", " No", " no")


def yes_no_log_odds(backend: Backend) -> Callable[[Any], float]:
    """log P(YES) - log P(NO) of the reply's first token after a prompt (each summed over its spellings)."""
    from wim_integrations.reading.scoring import logsumexp

    yes = {backend.encode_text(w)[0] for w in _YES}
    no = {backend.encode_text(w)[0] for w in _NO}
    yes, no = yes - no, no - yes
    lock = threading.Lock()

    def log_odds(prompt: Any) -> float:
        ids = plain_prompt_ids(backend, prompt.to_messages())
        with lock:
            cache = backend.new_cache()
            backend.prefill(cache, ids[:-1])
            (row,) = backend.score_rows(cache, [ids[-1:]], next_ids=sorted(yes | no))
        lp = row.next_logprobs
        return logsumexp([lp[t] for t in yes]) - logsumexp([lp[t] for t in no])

    return log_odds


def _chain_filter(backend: Backend, task: RetrievalTask, by_probability: bool) -> Filtered:
    from langchain_classic.output_parsers.boolean import BooleanOutputParser
    from langchain_classic.retrievers.document_compressors import LLMChainFilter
    from langchain_classic.retrievers.document_compressors.chain_filter import _get_default_chain_prompt
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    docs = [Document(page_content=p, id=str(i)) for i, p in enumerate(task.pieces)]
    prompt = _get_default_chain_prompt()  # LangChain's own YES/NO prompt
    notes: list[str] = []
    scores: list[float | None] = []
    if by_probability:
        odds = yes_no_log_odds(backend)

        def decide(p: Any) -> bool:
            value = odds(p)
            scores.append(value)
            return value > 0

        chain: Any = prompt | RunnableLambda(decide)
    else:
        parser = BooleanOutputParser()

        def parse(reply: Any) -> bool:
            notes.append(str(reply.content))
            try:
                return parser.parse(str(reply.content))
            except ValueError:  # neither YES nor NO (or both): not kept
                return False

        chain = prompt | PlainChat.model(backend) | RunnableLambda(parse)
    # Filled in batch order: LLMChainFilter batches in threads, so run one input at a time to keep them aligned.
    kept = LLMChainFilter(llm_chain=chain.with_config(max_concurrency=1)).compress_documents(docs, task.question)
    return Filtered([int(d.id or -1) for d in kept], scores or None, notes or None)


def _postprocessor(
    wim: WiM, task: RetrievalTask, hops: int = 1, hop_threshold: float = DEFAULT_HOP_THRESHOLD
) -> Filtered:
    from llama_index.core.schema import NodeWithScore, TextNode

    from wim_integrations.llamaindex import WiMNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(id_=str(i), text=p), score=1.0) for i, p in enumerate(task.pieces)]
    post = WiMNodePostprocessor(wim, hops=hops, hop_threshold=hop_threshold)
    kept = post.postprocess_nodes(nodes, query_str=task.question)
    return Filtered([int(n.node.node_id) for n in kept])


def _answer(backend: Backend, pieces: Sequence[str], question: str) -> str:
    """The plain reader: one chat turn with the kept pieces and the question, from an empty cache."""
    body = "\n\n".join(pieces) + f"\n\nQuestion: {question}" if pieces else f"Question: {question}"
    ids = backend.chat_frame().user_turn_ids(backend, body)
    out = list(backend.generate(backend.new_cache(), GenerationRequest(ids, 20)))
    return backend.decode(out).strip()


def run(
    wim: WiM,
    ks: Sequence[int],
    seeds: int | Sequence[int],
    out: Path | None,
    kinds: Sequence[str] = KINDS,
    systems: Sequence[str] = SYSTEMS,
    hop_threshold: float = DEFAULT_HOP_THRESHOLD,
) -> list[dict[str, Any]]:
    b = wim.backend

    def count(text: str) -> int:
        return len(b.encode_text(text))

    filters: dict[str, Callable[[RetrievalTask], Filtered]] = {
        "none": lambda task: Filtered(list(range(len(task.pieces)))),
        "holding_only": lambda task: Filtered(sorted(task.holding)),
        "chain_filter": lambda task: _chain_filter(b, task, by_probability=False),
        "chain_filter_prob": lambda task: _chain_filter(b, task, by_probability=True),
        "compressor": lambda task: _compressor(wim, task),
        "postprocessor": lambda task: _postprocessor(wim, task),
        "compressor_hops": lambda task: _compressor(wim, task, hops=2, hop_threshold=hop_threshold),
        "postprocessor_hops": lambda task: _postprocessor(wim, task, hops=2, hop_threshold=hop_threshold),
    }
    records = []
    for k in ks:
        for kind in kinds:
            for seed in range(seeds) if isinstance(seeds, int) else seeds:
                task = make_task(count, kind, k, seed)
                for system in systems:
                    t0 = time.perf_counter()
                    got = filters[system](task)
                    seconds = time.perf_counter() - t0
                    kept = got.kept
                    prediction = _answer(b, [task.pieces[i] for i in kept], task.question)
                    rec = {
                        "task": task.id,
                        "kind": kind,
                        "k": k,
                        "seed": seed,
                        "system": system,
                        "kept": kept,
                        "holding": list(task.holding),
                        "recall": sum(i in kept for i in task.holding) / len(task.holding),
                        "kept_share": len(kept) / k,
                        "correct": mentions(prediction, task.answer),
                        "prediction": prediction,
                        "seconds": seconds,
                    }
                    if got.piece_scores is not None:
                        rec["piece_scores"] = got.piece_scores
                    if got.notes is not None:
                        rec["notes"] = got.notes
                    if got.extra is not None:
                        rec.update(got.extra)
                    if system.endswith("_hops"):
                        rec["hop_threshold"] = hop_threshold
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
    parser.add_argument("--seeds", type=int, default=6, help="tasks per (k, kind): seeds 0 .. N-1")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None, help="these seeds instead of --seeds")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--hop-threshold", type=float, default=DEFAULT_HOP_THRESHOLD, help="the hops systems' hop_threshold"
    )
    parser.add_argument("--model", default="default", help="local model dir; 'default' = embedded SmolLM2")
    parser.add_argument("--out", type=Path, default=None, help="append each record (JSON lines) here")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        default=None,
        help="print the table of these results files and exit (only --seed-list seeds and --systems, when given)",
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        records = [json.loads(line) for f in args.report for line in f.read_text().splitlines() if line.strip()]
        keep = set(args.seed_list) if args.seed_list is not None else None
        print(table([r for r in records if r["system"] in args.systems and (keep is None or r["seed"] in keep)]))
        return 0
    wim = WiM.default() if args.model == "default" else WiM.from_pretrained(args.model)
    wim = wim.with_options(document_cache=None)  # every system's time is a first read
    seeds = args.seed_list if args.seed_list is not None else args.seeds
    records = run(wim, args.ks, seeds, args.out, args.kinds, args.systems, args.hop_threshold)
    print(f"model {wim.model_name}; {machine_facts()}")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
