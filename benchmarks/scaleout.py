"""WiM through a router in front of several vLLM replicas: does each document stay on one replica's prefix cache?

    python benchmarks/scaleout.py --router http://127.0.0.1:8100 \\
        --replicas http://127.0.0.1:8101 http://127.0.0.1:8102 --route-header x-session-id

The router and the replicas are started beforehand (docs/serving.md, "Several replicas: keep a document on one").
On `--documents` generated documents (benchmarks/serving.py's: village filler with two planted codes), each asked its
two questions one after the other, every WiM run goes to the router; each replica's own prefix-cache counters
(`/metrics`: `vllm:prefix_cache_queries`/`_hits`, prompt tokens looked up / found) are read before and after each run,
so the table shows which replica served the run and how much of it came from that replica's cache. A document pinned
to one replica has all of its runs' lookups on that replica, and its second question finds the document there.

`--route-header NAME` makes WiM send the document's key in that header on every request (`ServerBackend(route_header=
...)`): vllm-router's `consistent_hash` policy routes on `x-session-id`. Without it the router decides from the
request alone. Functional, not timed: the seconds printed are for orientation only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "src"), str(_ROOT)]

from benchmarks.scoring import mentions  # noqa: E402
from benchmarks.serving import make_document, new_requests, request_stats  # noqa: E402
from wim_integrations import WiM, WiMConfig  # noqa: E402
from wim_integrations.backends.server import ServerBackend  # noqa: E402
from wim_integrations.backends.vllm_server import prefix_cache_counters  # noqa: E402


def counters(replicas: list[str]) -> list[tuple[float, float]]:
    return [prefix_cache_counters(url) for url in replicas]


def run_document(wim: WiM, replicas: list[str], seed: int, n_segments: int, cfg: WiMConfig) -> list[dict[str, Any]]:
    """Both questions of one document, in order; per run, each replica's lookups and hits and WiM's request log."""
    backend = wim.backend
    assert isinstance(backend, ServerBackend)
    doc = make_document(wim, n_segments, cfg, seed)
    rows = []
    for q, (question, answer) in enumerate(zip(doc.questions, doc.answers, strict=True)):
        before = counters(replicas)
        with new_requests(backend) as recs:
            t0 = time.perf_counter()
            result = wim.run(doc.text, question, config=cfg)
            seconds = time.perf_counter() - t0
        after = counters(replicas)
        per_replica = [{"queries": a[0] - b[0], "hits": a[1] - b[1]} for a, b in zip(after, before, strict=True)]
        stats = request_stats(recs)
        rows.append(
            {
                "document": seed,
                "question": q + 1,
                "seconds": seconds,
                "replicas": per_replica,
                "served_by": [i for i, r in enumerate(per_replica) if r["queries"] > 0],
                "computed_tokens": stats["computed_tokens"],
                "cold_prompt_tokens": stats["cold_prompt_tokens"],
                "margin_prefix_cached_tokens": stats["margin_prefix_cached_tokens"],
                "answer": result.answer,
                "correct": mentions(result.answer, answer),
            }
        )
        print(f"# document {seed}, question {q + 1} done ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return rows


def report(rows: list[dict[str, Any]], replicas: list[str]) -> str:
    head = " | ".join(f"replica {i + 1}: looked up / hits" for i in range(len(replicas)))
    lines = [
        f"| document | question | {head} | served by | prompt tokens computed / if sent cold | "
        "margin prefix from cache | answer (correct) |",
        "|---|---|" + "---|" * len(replicas) + "---|---|---|---|",
    ]
    for r in rows:
        cells = " | ".join(
            f"{x['queries']:.0f} / {x['hits']:.0f}" + (f" ({x['hits'] / x['queries']:.0%})" if x["queries"] else "")
            for x in r["replicas"]
        )
        served = ", ".join(str(i + 1) for i in r["served_by"]) or "–"
        share = "–" if r["margin_prefix_cached_tokens"] is None else f"{r['margin_prefix_cached_tokens']:.2f}"
        computed = "–" if r["computed_tokens"] is None else str(r["computed_tokens"])
        lines.append(
            f"| {r['document']} | {r['question']} | {cells} | {served} | {computed} / {r['cold_prompt_tokens']} | "
            f"{share} | {r['answer'][:40]!r} ({'yes' if r['correct'] else 'no'}) |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", required=True, help="the router's URL (WiM talks only to it)")
    ap.add_argument("--replicas", nargs="+", required=True, help="each vLLM replica's URL (for its /metrics)")
    ap.add_argument("--route-header", help="ServerBackend(route_header=...): e.g. x-session-id for vllm-router")
    ap.add_argument("--served-model", default="smollm2", help="the replicas' --served-model-name")
    ap.add_argument("--tokenizer", help="the served model's tokenizer directory (default: the embedded model's)")
    ap.add_argument("--documents", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="document seeds are this and the next ones")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--margin-tokens", type=int, default=24)
    ap.add_argument("--classification", default="lexical", help="WiMConfig.classification (default: lexical)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows here")
    args = ap.parse_args()

    from wim_integrations.models import ensure_default_converted

    tokenizer = args.tokenizer or str(ensure_default_converted())
    cfg = WiMConfig(
        segment_tokens=args.segment_tokens,
        margin_max_new_tokens=args.margin_tokens,
        classification=args.classification,
    )
    wim = WiM.from_server(
        args.router,
        tokenizer=tokenizer,
        engine="vllm",
        model=args.served_model,
        route_header=args.route_header,
        config=cfg,
    )
    try:
        rows = [
            row
            for seed in range(args.first_seed, args.first_seed + args.documents)
            for row in run_document(wim, args.replicas, seed, args.segments, cfg)
        ]
    finally:
        wim.backend.close()  # type: ignore[attr-defined]
    print(f"# router {args.router}, route header {args.route_header or 'none'}; replicas {' '.join(args.replicas)}")
    print(report(rows, args.replicas))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
