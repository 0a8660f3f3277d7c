"""Score-based relevance on the embedded SmolLM2-135M (slow): the scores separate what the text says from what it
does not, and the quickstart document keeps the margin that holds the answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from wim_integrations.config import WiMConfig

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parents[1] / "examples" / "harbor_report.txt"
QUESTION = "Who is the new keeper of the Corran Point lighthouse?"
FACT = "The new keeper of the Corran Point lighthouse is Ines Marlowe, a former pilot of the harbor."
FILLER = (
    "The summer fair was held on the quay in August and drew a large crowd despite the rain. The rowing race between "
    "the fishing families was won by the crew of the boat Good Hope."
)


def _mean_logprob(wim, text: str, margin: str) -> float:
    """Mean log P(margin) after the margin prompt, with `text` as all that was read (plain, one forward)."""
    b = wim.backend
    plan = wim.plan(text or "x", QUESTION)
    ids = [*plan.head_ids, *b.encode_text(text), *plan.margin_prompt_ids]
    cache = b.new_cache()
    b.prefill(cache, ids[:-1])
    [scores] = b.score_rows(cache, [[ids[-1], *b.encode_text(margin)]])
    return sum(scores.token_logprobs) / len(scores.token_logprobs)


def test_a_copied_fact_is_raised_by_its_segment_and_an_invented_one_is_not(default_wim):
    copied = "The new keeper is Ines Marlowe."
    invented = "The new keeper is Pavel Oduya."
    lift = {
        (margin, name): _mean_logprob(default_wim, segment, margin) - _mean_logprob(default_wim, "", margin)
        for margin in (copied, invented)
        for name, segment in (("fact", FACT), ("filler", FILLER))
    }
    # The segment that states the fact raises the copied margin far more than an unrelated segment does ...
    assert lift[(copied, "fact")] > lift[(copied, "filler")] + 0.5
    # ... and more than it raises an invented margin of the same shape.
    assert lift[(copied, "fact")] > lift[(invented, "fact")] + 0.5


@pytest.mark.parametrize("scope", ["segment"])
def test_quickstart_keeps_the_margin_with_the_answer_and_drops_others(default_wim, scope):
    cfg = WiMConfig(
        segment_tokens=256, margin_max_new_tokens=32, answer_max_new_tokens=24, margin_scope=scope
    )  # the README quickstart's settings, with the default classification
    assert cfg.scored, "the default classification should be score-based"
    result = default_wim.run(EXAMPLE.read_text(), QUESTION, config=cfg)
    text = EXAMPLE.read_text()
    holding = [m for m in result.margins if "Ines Marlowe" in text[m.char_span[0] : m.char_span[1]]]
    assert len(holding) == 1
    assert holding[0].relevant and "Marlowe" in holding[0].text
    dropped = [m for m in result.margins if not m.relevant]
    assert dropped, [(m.text, m.score) for m in result.margins]
    assert all(m.score is not None for m in result.margins)
    assert "Marlowe" in result.answer
