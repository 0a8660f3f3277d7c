"""The model judge: a shared head prefilled once, tails generated over it (one by one or packed) must give what the
model writes for the whole classification prompt from scratch; replies stop once their verdict is settled."""

from __future__ import annotations

import pytest
from helpers import SAMPLE, plain_generate, plain_text

from wim_integrations import WiM, WiMConfig
from wim_integrations.prompts import PromptSet, render, split_at_placeholder
from wim_integrations.reading import classifier as classifier_module
from wim_integrations.reading.classifier import MarginClassifier

QUESTION = "Who keeps the lighthouse?"
MARGINS = ["Ines Marlowe keeps the lighthouse.", "Nothing relevant.", "The gate code is 4417.", "Boats {{question}}"]
CFG = WiMConfig(segment_tokens=150, margin_max_new_tokens=8, answer_max_new_tokens=4, classifier_max_new_tokens=6)


@pytest.mark.parametrize(
    "template",
    [
        PromptSet.default().classification,
        "Q: {{question}}\nNote:\t {{ margin }}\nAgain: {{question}}",  # question after the margin, odd spacing
        "no margin here: {{question}}",
        "{{margin}} first",
    ],
)
def test_split_template_renders_like_the_whole(template):
    head, tail = split_at_placeholder(template, "margin")
    assert head + tail == template
    assert not head.endswith((" ", "\t"))
    values = {"question": "Who {{margin}}?", "margin": "x {{question}} y"}
    assert render(head, question=values["question"]) + render(tail, **values) == render(template, **values)


def _judge(backend, wim: WiM) -> MarginClassifier:
    return MarginClassifier(backend, wim.frame, wim.prompts.classification, QUESTION, CFG.classifier_max_new_tokens)


@pytest.mark.parametrize("packed", [False, True])
def test_replies_equal_plain_generation_of_the_whole_prompt(tiny_backend, packed):
    wim = WiM(tiny_backend, config=CFG)
    judge = _judge(tiny_backend, wim)
    frame = wim.frame
    whole = frame.user_turn_ids(tiny_backend, render(wim.prompts.classification, question=QUESTION, margin=MARGINS[0]))
    assert tiny_backend.decode(judge.prompt_ids(MARGINS[0])) == tiny_backend.decode(whole)  # same text, split tokens
    batches = [MARGINS] if packed else [[m] for m in MARGINS]
    replies = [reply for batch in batches for _, reply in judge.classify(batch, lambda: None)]
    for margin, reply in zip(MARGINS, replies, strict=True):
        assert reply == plain_text(tiny_backend, judge.prompt_ids(margin), CFG.classifier_max_new_tokens)
    assert tiny_backend.cache_length(judge._cache) == len(judge.head_ids)  # rolled back to the shared head


@pytest.mark.parametrize("packed", [False, True])
def test_replies_stop_once_the_verdict_is_settled(tiny_backends, monkeypatch, packed):
    b = tiny_backends["llama"]
    wim = WiM(b, config=CFG)
    judge = _judge(b, wim)
    full = [plain_generate(b, judge.prompt_ids(m), CFG.classifier_max_new_tokens) for m in MARGINS]
    assert all(len(f) >= 3 for f in full), "the tiny model should write at least 3 tokens"
    seen: list[str] = []
    two = {b.decode(f[:2]) for f in full} - {b.decode(f[:1]) for f in full}
    assert len(two) == len(MARGINS), "pick margins whose replies differ"

    def settled_after_two(reply: str) -> bool:  # stand-in: "settled" after the second token of each reply
        seen.append(reply)
        return reply in two

    monkeypatch.setattr(classifier_module, "verdict_is_settled", settled_after_two)
    batches = [MARGINS] if packed else [[m] for m in MARGINS]
    replies = [reply for batch in batches for _, reply in judge.classify(batch, lambda: None)]
    assert seen
    assert replies == [b.decode(f[:2]).strip() for f in full]
    assert judge.generated_tokens == 2 * len(MARGINS)


def test_the_head_is_prefilled_once_per_run(tiny_backends, monkeypatch):
    b = tiny_backends["qwen2"]
    prefills: list[int] = []
    original = b.prefill
    monkeypatch.setattr(b, "prefill", lambda cache, ids: (prefills.append(len(ids)), original(cache, ids))[1])
    wim = WiM(b, config=CFG.with_updates(classification="same_model"))
    result = wim.run(SAMPLE, QUESTION)
    judge = _judge(b, wim)
    assert result.n_segments >= 3
    # head of the context + one prefill per segment + the classifier's head, once
    assert prefills.count(len(judge.head_ids)) == 1
    assert len(prefills) == 1 + result.n_segments + 1
