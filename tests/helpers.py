"""Plain recomputations the equivalence tests compare WiM against."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import torch


def plain_generate(backend, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """`model.generate` on the whole token sequence from scratch: greedy, the model's own eos ids."""
    model = backend.model
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(backend.stop_ids),
            pad_token_id=sorted(backend.stop_ids)[0],
        )
    new = out[0, input_ids.shape[1] :].tolist()
    for i, tok in enumerate(new):
        if tok in backend.stop_ids:
            return new[:i]
    return new


def plain_text(backend, ids: Sequence[int], max_new_tokens: int) -> str:
    return backend.decode(plain_generate(backend, ids, max_new_tokens)).strip()


SAMPLE = (
    "The harbor of Greywater sits at the mouth of the river. Boats come and go with the tide.\n\n"
    "The keeper of the lighthouse is Ines Marlowe. She took the post in May. "
    "Numbers matter: 4417 is the code of the gate.\n\n"
    "Paris is the capital of France. Berlin is the capital of Germany. "
) * 6

# A document a hostile or careless source could send: markup and script that a report must show as text.
HOSTILE = (
    'Untrusted notes. <script>document.body.dataset.pwned = "1"</script> <b>not bold</b> '
    '<img src=x onerror="document.body.dataset.pwned=1"> & "quotes" \'single\' </div></section>\n\n'
    "The second paragraph of the untrusted document ends here."
)


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`wim ARGV...` in process: (exit status, standard output, standard error)."""
    from wim_integrations.frontends.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def record_quotes(monkeypatch, backend) -> list[tuple[Any, list[int]]]:
    """Wrap `backend.generate` / `generate_packed` (this test only) to record every constrained decoding: (its
    `SpanConstraint`, the tokens it yielded), in the order requested (a group's rows in row order)."""
    seen: list[tuple[Any, list[int]]] = []
    generate, generate_packed = backend.generate, backend.generate_packed

    def recorded(cache, request):
        out: list[int] = []
        if request.span is not None:
            seen.append((request.span, out))
        inner = generate(cache, request)
        try:
            for token in inner:
                out.append(token)
                yield token
        finally:
            inner.close()

    def recorded_packed(cache, request):
        outs: list[list[int]] = [[] for _ in request.rows]
        for span, out in zip(request.spans or [], outs, strict=False):
            if span is not None:
                seen.append((span, out))
        inner = generate_packed(cache, request)
        try:
            for step in inner:
                for i, token in step:
                    outs[i].append(token)
                yield step
        finally:
            inner.close()

    monkeypatch.setattr(backend, "generate", recorded)
    monkeypatch.setattr(backend, "generate_packed", recorded_packed)
    return seen


def assert_quoted(backend, plan, result, seen, budget: int, min_tokens: int) -> None:
    """Every margin of `result` was decoded under its own segment's constraint and is a contiguous span of that
    segment's tokens (token level: its first token that segment token or, with `quote_loose_start`, the same token
    without its leading space; every later token the segment's next one), within the budget and at least `min_tokens`
    long unless it ends at the segment's end; its text is then a piece of the segment's text."""
    from wim_integrations.backends.span import is_span

    segments = plan.context.segments
    assert len(seen) == len(result.margins) == len(segments)
    for seg, margin, (span, tokens) in zip(segments, result.margins, seen, strict=True):
        source = span.source
        assert source == seg.token_ids and span.min_tokens == min_tokens
        assert is_span(tokens[1:], source), (margin.text, tokens)
        assert span.accepts(tokens), (margin.text, tokens)
        if tokens and tokens[0] not in source:  # a stand-in: the space-less form of a segment token
            assert plan.config.quote_loose_start
            standing_for = span.starts[tokens[0]]
            assert standing_for and all(backend.decode([t]) == " " + backend.decode(tokens[:1]) for t in standing_for)
        assert len(tokens) == margin.n_tokens <= budget
        m = span.start()
        for t in tokens:
            m.push(t)
        assert len(tokens) >= min_tokens or m.must_stop or len(tokens) == budget, tokens
        if "\ufffd" not in margin.text:  # a span cut inside a character decodes to a replacement character
            assert margin.text in seg.text
