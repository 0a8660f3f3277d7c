"""The engine on a pure-Python backend (tests/core/fake_backend.py): it runs without torch, its cache tricks equal plain
recomputation on every reading path, and it picks its path from the backend's declared capabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import pytest
from fake_backend import FakeBackend, plain_generate, teacher_forced

from wim_integrations import WiM, WiMConfig, WiMInputError
from wim_integrations.backends.base import (
    Backend,
    Capabilities,
    GenerationRequest,
    PackedBackend,
    PackedRequest,
    PackedRow,
)
from wim_integrations.reading.scoring import lexical_score

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = (
    "The harbor of Greywater sits at the mouth of the river. Boats come and go with the tide.\n\n"
    "The keeper of the lighthouse is Ines Marlowe. She took the post in May. "
    "Numbers matter: 4417 is the code of the gate. Piers 0, 1, 2 and 3 hold boats B, C, D and M.\n\n"
    "Paris is the capital of France. Berlin is the capital of Germany. "
) * 10
QUESTION = "Who keeps the lighthouse?"
CFG = WiMConfig(
    segment_tokens=600, margin_max_new_tokens=10, answer_max_new_tokens=12, classification="none", margin_stop="eos"
)


def test_fake_backend_satisfies_the_protocols() -> None:
    b = FakeBackend()
    assert isinstance(b, Backend) and isinstance(b, PackedBackend)
    assert b.encode_template("a<|end|>b") == [*b.encode_text("a"), 1, *b.encode_text("b")]
    assert b.decode(b.encode_template("x<|end|>y")) == "xy"
    ids, offsets = b.encode_with_offsets("héllo")
    assert b.decode(ids) == "héllo" and offsets == [0, 1, 2, 3, 4]
    bound = b.min_tokens(len("東京".encode()))
    assert bound is not None and 0 < bound <= 2
    plain = FakeBackend(native_chat=False)
    assert not plain.chat_frame().native
    assert plain.render_chat([{"role": "user", "content": "hi"}]) == plain.chat_frame().prefix + "hi" + (
        plain.chat_frame().suffix
    )


def test_generate_packed_and_score_rows_match_generate_and_teacher_forcing() -> None:
    b = FakeBackend()
    doc = b.encode_text(CONTEXT[:400])
    prompt = b.encode_text(" Note:")
    cache = b.new_cache()
    b.prefill(cache, doc)
    lp: list[float] = []
    out = list(b.generate(cache, GenerationRequest(prompt, 9, logprobs=lp)))
    assert out and lp == teacher_forced(doc + prompt, out)
    assert len(cache) == len(doc) + len(prompt) + len(out) - (1 if len(out) == 9 else 0)
    b.rollback(cache, len(doc))

    cuts = [100, 250, 400]
    rows = [PackedRow(c, prompt) for c in cuts]
    packed_lp: list[list[float]] = [[] for _ in rows]
    written: list[list[int]] = [[] for _ in rows]
    for step in b.generate_packed(cache, PackedRequest(rows, 9, logprobs=packed_lp)):
        for i, tok in step:
            written[i].append(tok)
    assert cache == doc  # left as it was
    for c, w, lps in zip(cuts, written, packed_lp, strict=True):
        assert w == plain_generate(b, doc[:c] + prompt, 9)
        assert lps == teacher_forced(doc[:c] + prompt, w)

    row = [*prompt, *written[0]]
    plain, packed = b.score_rows(cache, [row, PackedRow(100, row)], next_ids=[1, 20])
    assert plain.token_logprobs == teacher_forced(doc + row[:1], row[1:])
    assert packed.token_logprobs == teacher_forced(doc[:100] + row[:1], row[1:])
    assert cache == doc


def test_the_engine_runs_without_torch_transformers_or_tokenizers() -> None:
    script = f"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "tokenizers"):
            raise ImportError(f"blocked import of {{name}}")
        return None

sys.meta_path.insert(0, Block())
sys.path[:0] = [{str(ROOT / "src")!r}, {str(Path(__file__).parent)!r}]
from wim_integrations import WiM, WiMConfig
from fake_backend import FakeBackend

cfg = WiMConfig(segment_tokens=600, margin_max_new_tokens=8, answer_max_new_tokens=8, margin_batch_size=2)
result = WiM(FakeBackend(), config=cfg).run({CONTEXT!r}, {QUESTION!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "tokenizers"))
print(json.dumps({{"n_segments": result.n_segments, "margins": len(result.margins), "loaded": loaded,
                  "scores": [m.score for m in result.margins], "answer": result.answer}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    n_segments = WiM(FakeBackend(), config=CFG).plan(CONTEXT, QUESTION).n_segments
    assert out["n_segments"] == n_segments >= 4
    assert out["margins"] == n_segments
    assert all(isinstance(s, float) for s in out["scores"])  # segment_pmi, the default, ran
    assert out["loaded"] == []


@pytest.mark.parametrize("batch", [1, 3])
def test_margins_and_answer_equal_plain_recomputation(batch: int) -> None:
    b = FakeBackend()
    wim = WiM(b, config=CFG.with_updates(margin_batch_size=batch))
    plan = wim.plan(CONTEXT, QUESTION)
    assert plan.n_segments >= 4 and plan.n_segments % 3 != 0  # a last, partial group
    result = wim.run(CONTEXT, QUESTION)
    assert b.packed_calls == (0 if batch == 1 else -(-plan.n_segments // 3))
    context = list(plan.context.token_ids)
    assert len(result.margins) == plan.n_segments
    for margin, seg in zip(result.margins, plan.context.segments, strict=True):
        ids = plan.head_ids + context[: seg.end_token] + plan.margin_prompt_ids
        assert margin.text == b.decode(plain_generate(b, ids, CFG.margin_max_new_tokens)).strip()
    final = wim.final_prompt_ids(QUESTION, result.margins, plan.n_segments)
    ids = plan.head_ids + context + final
    assert result.answer == b.decode(plain_generate(b, ids, CFG.answer_max_new_tokens)).strip()
    # The fake model writes margins cut by the stop id (one empty) and margins cut by the budget.
    assert {m.n_tokens == CFG.margin_max_new_tokens for m in result.margins} == {True, False}
    assert any(not m.text for m in result.margins) and result.answer


@pytest.mark.parametrize("batch", [1, 3])
def test_segment_pmi_scores_equal_teacher_forced_recomputation(batch: int) -> None:
    b = FakeBackend()
    cfg = WiMConfig(
        segment_tokens=600,
        margin_max_new_tokens=10,
        answer_max_new_tokens=4,
        margin_batch_size=batch,
        margin_stop="eos",
    )
    wim = WiM(b, config=cfg)
    plan = wim.plan(CONTEXT, QUESTION)
    assert plan.config.classification == "segment_pmi"
    result = wim.run(CONTEXT, QUESTION)
    context, prompt = list(plan.context.token_ids), plan.margin_prompt_ids
    for margin, seg in zip(result.margins, plan.context.segments, strict=True):
        with_segment = plan.head_ids + context[: seg.end_token] + prompt
        before_segment = plan.head_ids + context[: seg.start_token] + prompt
        tokens = plain_generate(b, with_segment, cfg.margin_max_new_tokens)
        assert margin.text == b.decode(tokens).strip()
        expected = (
            fmean(teacher_forced(with_segment, tokens)) - fmean(teacher_forced(before_segment, tokens))
            if tokens
            else 0.0
        )
        assert margin.score == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert margin.relevant == (expected >= cfg.threshold)


@pytest.mark.parametrize("batch", [1, 3])
def test_question_pmi_terms_equal_teacher_forced_recomputation(batch: int) -> None:
    """Each term on its own: grounding as segment_pmi, question = the margin after its segment with the margin prompt
    minus the same after the question-free prompt; the score their weighted sum (exact arithmetic here)."""
    from wim_integrations.config import QUESTION_WEIGHT

    b = FakeBackend()
    cfg = WiMConfig(
        segment_tokens=600,
        margin_max_new_tokens=10,
        answer_max_new_tokens=4,
        margin_batch_size=batch,
        margin_stop="eos",
        classification="question_pmi",
    )
    wim = WiM(b, config=cfg)
    plan = wim.plan(CONTEXT, QUESTION)
    result = wim.run(CONTEXT, QUESTION)
    context, prompt, free = list(plan.context.token_ids), plan.margin_prompt_ids, plan.question_free_prompt_ids
    assert free != prompt and free[: plan.margin_head_length] == prompt[: plan.margin_head_length]
    scored = 0
    for margin, seg in zip(result.margins, plan.context.segments, strict=True):
        with_segment = plan.head_ids + context[: seg.end_token] + prompt
        tokens = plain_generate(b, with_segment, cfg.margin_max_new_tokens)
        assert margin.text == b.decode(tokens).strip()
        if not tokens:
            assert margin.score == 0.0
            continue
        with_text = fmean(teacher_forced(with_segment, tokens))
        grounding = with_text - fmean(teacher_forced(plan.head_ids + context[: seg.start_token] + prompt, tokens))
        question = with_text - fmean(teacher_forced(plan.head_ids + context[: seg.end_token] + free, tokens))
        assert margin.score_terms == pytest.approx({"grounding": grounding, "question": question}, rel=1e-12)
        assert margin.score == pytest.approx(grounding + QUESTION_WEIGHT * question, rel=1e-12, abs=1e-12)
        assert margin.relevant == (margin.score >= cfg.threshold)
        scored += 1
    assert scored


def test_without_packed_rows_a_batched_config_reads_step_by_step() -> None:
    full = FakeBackend()
    step = FakeBackend(Capabilities(packed_rows=False, scoring="rows", generation_logprobs=True))
    cfg = CFG.with_updates(margin_batch_size=3)
    batched = WiM(full, config=cfg).run(CONTEXT, QUESTION)
    stepwise = WiM(step, config=cfg).run(CONTEXT, QUESTION)
    assert full.packed_calls > 0 and step.packed_calls == 0
    assert [m.text for m in stepwise.margins] == [m.text for m in batched.margins]
    assert stepwise.answer == batched.answer


def test_without_scoring_the_default_classification_is_lexical() -> None:
    cfg = WiMConfig(segment_tokens=600, margin_max_new_tokens=10, answer_max_new_tokens=4)  # classification unset
    wim = WiM(FakeBackend(Capabilities(packed_rows=True, scoring="none")), config=cfg)
    plan = wim.plan(CONTEXT, QUESTION)
    assert plan.config.classification == "lexical"
    result = wim.run(CONTEXT, QUESTION)
    segments = plan.context.segments
    for m, seg in zip(result.margins, segments, strict=True):
        assert m.score == lexical_score(m.text, seg.text, QUESTION)


def test_without_scoring_an_explicit_pmi_is_refused() -> None:
    wim = WiM(FakeBackend(Capabilities(packed_rows=True, scoring="none")), config=CFG)
    with pytest.raises(WiMInputError, match="lexical"):
        wim.stream(CONTEXT, QUESTION, classification="pmi")
