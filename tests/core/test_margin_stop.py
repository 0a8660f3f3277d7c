"""Margin stop rules: a margin stopped by a rule is exactly the margin the model writes without one, cut at the first
token where the rule holds, on every reading path and backend; and the rules read text as documented."""

from __future__ import annotations

import pytest
from fake_backend import FakeBackend
from fake_backend import plain_generate as fake_generate
from helpers import SAMPLE
from helpers import plain_generate as hf_generate
from test_fake_backend import CONTEXT as FAKE_CONTEXT

from wim_integrations import WiM, WiMConfig
from wim_integrations.analysis import Analysis
from wim_integrations.reading.stopping import stop_rule

QUESTION = "Who keeps the lighthouse?"
CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=12, answer_max_new_tokens=6, classification="none")
FAKE_CFG = CFG.with_updates(segment_tokens=600)  # the fake tokenizer has a token per character


@pytest.mark.parametrize(
    ("text", "sentence", "line"),
    [
        ("The code is red.", True, False),
        ("Hello!", True, False),
        ('He said "yes."', True, False),
        ("Why?)", True, False),
        ("The end. ", True, False),
        ("Two lines\n", True, True),
        ("The code is 4921.", False, False),  # after a digit: a code, a list number or a decimal point may go on
        ("1.", False, False),
        ("3.5", False, False),
        ("\n\nA heading", False, False),  # line breaks before any text do not end anything
        ("No end yet", False, False),
    ],
)
def test_rules_read_the_text_so_far(text: str, sentence: bool, line: bool) -> None:
    ids = [ord(c) for c in text]
    decode = lambda ids: "".join(map(chr, ids))  # noqa: E731
    assert stop_rule("sentence", decode)(ids) is sentence  # type: ignore[misc]
    assert stop_rule("line", decode)(ids) is line  # type: ignore[misc]
    assert stop_rule("eos", decode) is None


def _cut(backend, ids: list[int], kind: str) -> list[int]:
    rule = stop_rule(kind, backend.decode)  # type: ignore[arg-type]
    assert rule is not None
    for n in range(1, len(ids) + 1):
        if rule(ids[:n]):
            return ids[:n]
    return ids


def _check(wim: WiM, generate, kind: str, batch: int, text: str = SAMPLE, cfg: WiMConfig = CFG) -> int:
    """Every margin equals plain generation cut by the rule; returns how many the rule cut."""
    b = wim.backend
    plan = wim.plan(text, QUESTION, cfg.with_updates(margin_stop=kind, margin_batch_size=batch))
    result = wim.run(text, QUESTION, config=plan.config)
    context = list(plan.context.token_ids)
    cut = 0
    for margin, seg in zip(result.margins, plan.context.segments, strict=True):
        full = generate(b, plan.head_ids + context[: seg.end_token] + plan.margin_prompt_ids, cfg.margin_max_new_tokens)
        want = _cut(b, full, kind)
        assert (margin.text, margin.n_tokens) == (b.decode(want).strip(), len(want))
        cut += len(want) < len(full)
    return cut


@pytest.mark.parametrize("batch", [1, 3])
def test_a_stopped_margin_is_plain_generation_cut_at_the_rule_fake_backend(batch: int) -> None:
    wim = WiM(FakeBackend(), config=FAKE_CFG, document_cache=None)
    # The fake model writes sentences: the rule is exercised.
    assert _check(wim, fake_generate, "sentence", batch, FAKE_CONTEXT, FAKE_CFG) > 0


@pytest.mark.parametrize("kind", ["sentence", "line"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_stopped_margin_is_plain_generation_cut_at_the_rule(tiny_backend, kind: str, batch: int) -> None:
    _check(WiM(tiny_backend, config=CFG, document_cache=None), hf_generate, kind, batch)


def test_notes_of_a_summary_are_not_cut_unless_asked() -> None:
    wim = WiM(FakeBackend(), config=FAKE_CFG)
    assert wim.plan(FAKE_CONTEXT, Analysis.summary(), FAKE_CFG).config.margin_stop == "eos"
    asked = FAKE_CFG.with_updates(margin_stop="line")
    assert wim.plan(FAKE_CONTEXT, Analysis.summary(), asked).config.margin_stop == "line"
    assert wim.plan(FAKE_CONTEXT, QUESTION, FAKE_CFG).config.margin_stop == "sentence"
