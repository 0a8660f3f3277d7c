"""Plain recomputations the equivalence tests compare WiM against."""

from __future__ import annotations

import io
from collections.abc import Sequence

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
