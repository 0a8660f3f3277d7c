"""What the LangChain adapter adds on top of the engine: `WiMChain.invoke` (custom events, child runs with usage and
the final prompt, a LangSmith tracer recording offline) against `WiM.run` on the same input, on the embedded SmolLM2.

    flock /tmp/wim-heavy.lock python benchmarks/langchain_overhead.py --repeats 5

Runs alternate (engine, chain, chain + tracer) so load changes on a shared machine hit all three alike; the report
gives each one's median and the chain's extra milliseconds per run. Greedy decoding: every run does the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Benchmark the checkout this script lives in (or --src), even where another copy of the package is installed.
_SRC = (
    sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(Path(__file__).resolve().parents[1] / "src")
)
sys.path.insert(0, _SRC)

from wim_integrations import WiM  # noqa: E402
from wim_integrations.langchain import WiMChain, langsmith_tracer  # noqa: E402
from wim_integrations.langchain.tracing import RecordingClient  # noqa: E402

TEXT = (Path(__file__).resolve().parents[1] / "examples" / "harbor_report.txt").read_text()
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--segment-tokens", type=int, default=256)
    ap.add_argument("--margin-tokens", type=int, default=24)
    ap.add_argument("--answer-tokens", type=int, default=24)
    ap.add_argument("--classification", default="same_model")
    ap.add_argument("--src", help="the src directory to benchmark (default: this checkout's)")
    args = ap.parse_args()

    wim = WiM.default()
    settings = {
        "segment_tokens": args.segment_tokens,
        "margin_max_new_tokens": args.margin_tokens,
        "answer_max_new_tokens": args.answer_tokens,
        "classification": args.classification,
    }
    chain = WiMChain(wim=wim, **settings)
    x = {"question": QUESTION, "context": TEXT}

    def engine() -> None:
        wim.run(TEXT, QUESTION, **settings)

    def chain_run() -> None:
        chain.invoke(x)

    def traced() -> None:
        tracer = langsmith_tracer(client=RecordingClient())
        chain.invoke(x, {"callbacks": [tracer]})
        tracer.wait_for_futures()

    runs = {"engine": engine, "chain": chain_run, "chain+tracer": traced}
    engine()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "src": _SRC,
        "settings": settings,
        "repeats": args.repeats,
        "median_seconds": med,
        "chain_extra_ms": 1000 * (med["chain"] - med["engine"]),
        "traced_extra_ms": 1000 * (med["chain+tracer"] - med["engine"]),
        "all_seconds": times,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
