"""WiM's cache tricks against plain recomputation: what WiM writes from its rolled-back cache must equal what the
model writes from a fresh prefill of the same tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLE, plain_generate, plain_text

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.base import GenerationRequest

# Margins run to the stop token or budget (no stop rule), the same as the plain `generate` they are compared with.
CFG = WiMConfig(
    segment_tokens=150, margin_max_new_tokens=12, answer_max_new_tokens=12, classification="none", margin_stop="eos"
)
QUESTION = "Who keeps the lighthouse?"


def test_chunked_prefill_matches_one_shot_logits(tiny_backend):
    b = tiny_backend
    ids = b.encode_text(SAMPLE)[:300]
    probe = ids[-1]
    cache = b.new_cache()
    for start in range(0, len(ids) - 1, 70):  # uneven chunks
        b.prefill(cache, ids[start : min(start + 70, len(ids) - 1)])
    assert b.cache_length(cache) == len(ids) - 1
    chunked = b._forward(cache, [probe])
    with torch.inference_mode():
        full = b.model(input_ids=torch.tensor([ids])).logits[:, -1, :]
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)


def test_rollback_leaves_the_cache_equal_to_a_fresh_prefill(tiny_backend):
    b = tiny_backend
    ids = b.encode_text(SAMPLE)[:240]
    first, second = ids[:120], ids[120:]
    cache = b.new_cache()
    b.prefill(cache, first)
    written = list(b.generate(cache, GenerationRequest(b.encode_text("Write a margin note."), 10)))
    assert written, "the tiny model should write something before rolling back"
    assert b.cache_length(cache) > len(first)
    b.rollback(cache, len(first))
    b.prefill(cache, second)

    fresh = b.new_cache()
    b.prefill(fresh, ids)
    assert b.cache_length(cache) == b.cache_length(fresh) == len(ids)
    for rolled, clean in zip(cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(rolled.keys, clean.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rolled.values, clean.values, rtol=1e-4, atol=1e-5)


def test_generate_equals_model_generate_and_stops_before_feeding_the_last_token(tiny_backend):
    b = tiny_backend
    prompt = b.encode_text(SAMPLE)[:100]
    cache = b.new_cache()
    ours = list(b.generate(cache, GenerationRequest(prompt, 9)))
    assert ours == plain_generate(b, prompt, 9)
    # The last token is never fed back: the cache holds the prompt and all generated tokens but the last (a stop
    # token is not returned, so after one every returned token was fed).
    assert b.cache_length(cache) == len(prompt) + len(ours) - (1 if len(ours) == 9 else 0)


def test_every_margin_equals_plain_generate_on_the_same_tokens(tiny_backend):
    wim = WiM(tiny_backend, config=CFG)
    plan = wim.plan(SAMPLE, QUESTION)
    assert plan.n_segments >= 3
    result = wim.run(SAMPLE, QUESTION)
    context = list(plan.context.token_ids)
    for margin, seg in zip(result.margins, plan.context.segments, strict=True):
        ids = plan.head_ids + context[: seg.end_token] + plan.margin_prompt_ids
        assert margin.text == plain_text(tiny_backend, ids, CFG.margin_max_new_tokens)


def test_final_answer_equals_plain_generate_on_the_full_final_sequence(tiny_backend):
    wim = WiM(tiny_backend, config=CFG)
    plan = wim.plan(SAMPLE, QUESTION)
    result = wim.run(SAMPLE, QUESTION)
    relevant = [m for m in result.margins if m.relevant]
    assert len(relevant) == plan.n_segments  # classification="none" keeps every margin
    final = wim.final_prompt_ids(QUESTION, relevant, plan.n_segments)
    ids = plan.head_ids + list(plan.context.token_ids) + final
    assert result.answer == plain_text(tiny_backend, ids, CFG.answer_max_new_tokens)
    assert result.tokens.context == len(plan.context.token_ids)
    assert result.tokens.answer_prompt == len(final)


def test_answer_now_answers_from_the_segments_read_so_far(tiny_backends):
    b = tiny_backends["llama"]
    wim = WiM(b, config=CFG)
    plan = wim.plan(SAMPLE, QUESTION)
    stream = wim.stream(SAMPLE, QUESTION, margin_batch_size=1)
    for event in stream:
        if event.type == "margin_written":
            stream.answer_now()
    result = stream.result
    assert result is not None and result.stopped_early
    assert result.segments_read == 1 and len(result.margins) == 1
    seg = plan.context.segments[0]
    final = wim.final_prompt_ids(QUESTION, result.margins, plan.n_segments)
    ids = plan.head_ids + list(plan.context.token_ids[: seg.end_token]) + final
    assert result.answer == plain_text(b, ids, CFG.answer_max_new_tokens)


def test_auxiliary_classifier_reply_equals_its_plain_generation(tiny_backends):
    from wim_integrations.prompts import render
    from wim_integrations.reading.classifier import MarginClassifier

    main, aux = tiny_backends["llama"], tiny_backends["qwen2"]
    wim = WiM(main, config=CFG.with_updates(classification="auxiliary", classifier_max_new_tokens=4), classifier=aux)
    result = wim.run(SAMPLE, QUESTION)
    frame = aux.chat_frame()
    judge = MarginClassifier(aux, frame, wim.prompts.classification, QUESTION, 4)
    for m in result.margins:
        ids = judge.prompt_ids(m.text)  # the whole prompt, tokenized as the run split it (shared head + tail)
        whole = render(wim.prompts.classification, question=QUESTION, margin=m.text)
        assert aux.decode(ids) == aux.decode(frame.user_turn_ids(aux, whole))
        assert m.classifier_output == plain_text(aux, ids, 4)


@pytest.mark.parametrize("seed", [3, 11])
def test_sampling_with_a_seed_is_reproducible(tiny_backends, seed):
    wim = WiM(tiny_backends["qwen2"], config=CFG)
    sampled = {"do_sample": True, "temperature": 1.5, "top_k": 50, "top_p": 0.95, "seed": seed}
    a = wim.run(SAMPLE, QUESTION, sampling=sampled)
    b = wim.run(SAMPLE, QUESTION, sampling=sampled)
    greedy = wim.run(SAMPLE, QUESTION)
    assert [m.text for m in a.margins] == [m.text for m in b.margins] and a.answer == b.answer
    assert [m.text for m in a.margins] + [a.answer] != [m.text for m in greedy.margins] + [greedy.answer]


def test_generation_stops_on_every_eos_id(tiny_backends):
    b = tiny_backends["phi3"]
    assert len(b.stop_ids) == 2  # both ids of generation_config.eos_token_id
    prompt = b.encode_text(SAMPLE)[:60]
    free = list(b.generate(b.new_cache(), GenerationRequest(prompt, 6)))
    assert len(free) >= 3
    original = b.stop_ids
    try:
        b.stop_ids = frozenset({free[2]})  # pretend the third greedy token is an eos id
        stopped = list(b.generate(b.new_cache(), GenerationRequest(prompt, 6)))
    finally:
        b.stop_ids = original
    assert stopped == free[: free.index(free[2])]
