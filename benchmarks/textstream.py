"""Cost of turning generated tokens into streamed text: whole-list re-decoding (before) vs DecodeStream (now).

    python benchmarks/textstream.py            # the embedded SmolLM2 tokenizer (no model weights are loaded)

For a text of N tokens, pushes the tokens one by one through each TextDeltas and reports the total time; the
whole-list version decodes N growing lists (quadratic), DecodeStream a short window per token. Same text either way
(tests/core/test_textstream.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "core"))

from test_textstream import WholeListDeltas
from transformers import AutoTokenizer

from wim_integrations.backends.tokenizer import HFTokenizer
from wim_integrations.models import ensure_default_converted
from wim_integrations.textstream import TextDeltas


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(ensure_default_converted())
    backend = HFTokenizer(tokenizer)  # the tokenizer side of HFBackend, without loading the model
    text = "The keeper, Ines Marlowe, took the post in May; café, 東京, 🙂. " * 200
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for n in (64, 256, 1024):
        row: dict[str, object] = {"tokens": n}
        for name, cls in (("whole_list", WholeListDeltas), ("decode_stream", TextDeltas)):
            best = float("inf")
            for _ in range(3):
                deltas = cls(backend.decode, backend.stream_decoder()) if cls is TextDeltas else cls(backend.decode)
                t0 = time.perf_counter()
                for t in ids[:n]:
                    deltas.push(t)
                deltas.flush()
                best = min(best, time.perf_counter() - t0)
            row[f"{name}_ms"] = round(best * 1000, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
