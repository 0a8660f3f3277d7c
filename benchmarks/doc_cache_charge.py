"""What a stored document costs the document cache, against its own keys/values (embedded model, default settings).

    python -m benchmarks.doc_cache_charge [--chars 1100] [--model default]

Prints, for one document: its tokens, its own keys/values (bytes per token from the model config x tokens, plus the
stored margin-prompt heads), the charge of its entry now (a compact copy), the charge a fork of the reading cache
would have (the room reserved for the run's peak included: what entries were charged before), and how many such
entries fit in the default 512 MiB."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

MIB = 1024 * 1024
HARBOR = Path(__file__).parents[1] / "examples" / "harbor_report.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=1100, help="characters of examples/harbor_report.txt to read")
    parser.add_argument("--model", default="default", help="'default' (embedded SmolLM2) or a model directory")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wim_integrations import DocumentCache, WiM
    from wim_integrations.models import load_backend, load_default_backend

    backend = load_default_backend() if args.model == "default" else load_backend(args.model)
    text = HARBOR.read_text(encoding="utf-8")[: args.chars]
    question = "Who is the new keeper of the Corran Point lighthouse?"
    cache = DocumentCache()
    wim = WiM(backend, document_cache=cache)
    plan = wim.plan(text, question)
    wim.run(text, question)
    [entry] = [e.cache for e in cache._entries.values()]
    c = backend.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = (
        2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * next(backend.model.parameters()).element_size()
    )
    heads = sum(backend.aside_nbytes(h) for h in entry.margin_heads.values())
    own = len(plan.full_ids) * per_token + heads
    # Before: the entry was a fork of the reading cache, whose buffers hold room for the run's peak.
    reading = backend.new_cache()
    backend.reserve(reading, plan.peak_tokens)
    backend.prefill(reading, plan.full_ids)
    forked = backend.cache_nbytes(reading) + heads
    now = cache.nbytes
    print(f"model {backend.name}: document {len(plan.full_ids)} tokens (run peak {plan.peak_tokens} tokens)")
    print(f"own keys/values (+ margin heads): {own / MIB:.2f} MiB")
    print(
        f"charged as a fork of the reading cache (before): {forked / MIB:.2f} MiB = {forked / own:.2f}x, "
        f"{cache.max_bytes // forked} entries per {cache.max_bytes // MIB} MiB"
    )
    print(
        f"charged as a compact copy (now): {now / MIB:.2f} MiB = {now / own:.2f}x, "
        f"{cache.max_bytes // now} entries per {cache.max_bytes // MIB} MiB"
    )


if __name__ == "__main__":
    main()
