"""Score-based relevance against plain recomputation: the log-probabilities a margin is scored with equal those of
a fresh forward pass over the same tokens, packed scoring equals one-by-one scoring, and the threshold decides."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SAMPLE

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.base import GenerationRequest, PackedRequest, PackedRow
from wim_integrations.config import QUESTION_WEIGHT
from wim_integrations.errors import WiMInputError
from wim_integrations.reading.classifier import MarginClassifier
from wim_integrations.reading.scoring import CONTENT_FREE_MARGIN, lexical_score, lexical_terms

QUESTION = "Who keeps the lighthouse?"
CFG = WiMConfig(
    segment_tokens=150, margin_max_new_tokens=10, answer_max_new_tokens=6, classification="pmi", margin_stop="eos"
)


def plain_logprobs(backend, ids: list[int]) -> torch.Tensor:
    """log-softmax of a fresh forward pass over the whole sequence: row j predicts ids[j + 1]."""
    with torch.inference_mode():
        logits = backend.model(input_ids=torch.tensor([ids])).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def teacher_forced(backend, prefix: list[int], continuation: list[int]) -> list[float]:
    logp = plain_logprobs(backend, prefix + continuation)
    return [float(logp[len(prefix) + j - 1, t]) for j, t in enumerate(continuation)]


def test_generate_reports_the_logprobs_of_a_plain_forward(tiny_backend):
    b = tiny_backend
    prompt = b.encode_text(SAMPLE)[:90]
    logprobs: list[float] = []
    out = list(b.generate(b.new_cache(), GenerationRequest(prompt, 8, logprobs=logprobs)))
    assert out and len(logprobs) == len(out)
    assert logprobs == pytest.approx(teacher_forced(b, prompt, out), abs=1e-3)


def test_packed_generation_reports_each_rows_logprobs_as_generate_does(tiny_backend):
    b = tiny_backend
    ids = b.encode_text(SAMPLE)[:200]
    prompt = b.encode_text("Write a margin note.")
    cache = b.new_cache()
    b.prefill(cache, ids)
    ends = [60, 130, 200]
    packed_lp: list[list[float]] = [[] for _ in ends]
    outs: list[list[int]] = [[] for _ in ends]
    rows = [PackedRow(e, prompt) for e in ends]
    for step in b.generate_packed(cache, PackedRequest(rows, 7, logprobs=packed_lp)):
        for i, tok in step:
            outs[i].append(tok)
    for e, out, lp in zip(ends, outs, packed_lp, strict=True):
        own: list[float] = []
        solo = b.new_cache()
        b.prefill(solo, ids[:e])
        assert list(b.generate(solo, GenerationRequest(prompt, 7, logprobs=own))) == out
        assert lp == pytest.approx(own, abs=1e-3)


def test_score_rows_packed_equals_one_by_one_and_a_plain_forward(tiny_backend):
    b = tiny_backend
    ids = b.encode_text(SAMPLE)[:120]
    rows = [b.encode_text(t) for t in ("The keeper is Ines.", "Nothing relevant.", "4417 is the code of the gate.")]
    next_ids = [5, 17, 42]
    cache = b.new_cache()
    b.prefill(cache, ids)
    packed = b.score_rows(cache, rows, next_ids)
    assert b.cache_length(cache) == len(ids)  # left as it was
    for row, scores in zip(rows, packed, strict=True):
        [alone] = b.score_rows(cache, [row], next_ids)
        assert scores.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-3)
        logp = plain_logprobs(b, ids + row)
        assert scores.token_logprobs == pytest.approx(teacher_forced(b, ids + row[:1], row[1:]), abs=1e-3)
        assert scores.next_logprobs == pytest.approx({t: float(logp[-1, t]) for t in next_ids}, abs=1e-3)


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", ["pmi", "segment_pmi"])
def test_pmi_score_is_the_margins_logprob_with_the_text_minus_without(tiny_backend, batch, mode):
    """pmi: without any text; segment_pmi: without the margin's own segment (the text before it stays)."""
    b = tiny_backend
    wim = WiM(b, config=CFG.with_updates(classification=mode))
    plan = wim.plan(SAMPLE, QUESTION)
    result = wim.run(SAMPLE, QUESTION, margin_batch_size=batch)
    assert len(result.margins) >= 3
    checked = 0
    starts = [len(plan.head_ids), *plan.segment_ends]
    for m, end, start in zip(result.margins, plan.segment_ends, starts, strict=False):
        # The margin's own tokens, regenerated plainly (re-encoding its text need not give the same tokens).
        prefix = plan.full_ids[:end] + plan.margin_prompt_ids
        out = list(b.generate(_cache_with(b, prefix[:-1]), GenerationRequest(prefix[-1:], CFG.margin_max_new_tokens)))
        if not out:
            assert m.score == 0.0
            continue
        with_text = teacher_forced(b, prefix, out)
        before = plan.head_ids if mode == "pmi" else plan.full_ids[:start]
        without = teacher_forced(b, before + plan.margin_prompt_ids, out)
        expected = sum(with_text) / len(out) - sum(without) / len(out)
        assert m.score == pytest.approx(expected, abs=2e-3)
        assert m.relevant == (m.score >= wim.config.threshold)
        assert m.verdict == ("yes" if m.relevant else "no")
        checked += 1
    assert checked


@pytest.mark.parametrize("batch", [1, 4])
def test_question_pmi_terms_equal_separate_plain_forward_passes(tiny_backend, batch):
    """question_pmi: grounding = log P(margin | text through its segment, prompt) - log P(margin | text before it,
    prompt); question = log P(margin | text through its segment, prompt) - log P(margin | the same text, prompt
    without the question). Each term recomputed here by its own unpacked forward pass over the whole sequence."""
    b = tiny_backend
    wim = WiM(b, config=CFG.with_updates(classification="question_pmi"))
    plan = wim.plan(SAMPLE, QUESTION)
    free = plan.question_free_prompt_ids
    head = plan.margin_head_ids
    assert free[: len(head)] == head and free != plan.margin_prompt_ids
    assert b.decode(free) == b.decode(head) + b.decode(free[len(head) :])  # the question is what is left out
    assert QUESTION not in b.decode(free) and QUESTION in b.decode(plan.margin_prompt_ids)
    result = wim.run(SAMPLE, QUESTION, margin_batch_size=batch)
    assert len(result.margins) >= 3
    checked = 0
    starts = [len(plan.head_ids), *plan.segment_ends]
    for m, end, start in zip(result.margins, plan.segment_ends, starts, strict=False):
        prefix = plan.full_ids[:end] + plan.margin_prompt_ids
        out = list(b.generate(_cache_with(b, prefix[:-1]), GenerationRequest(prefix[-1:], CFG.margin_max_new_tokens)))
        if not out:
            assert m.score == 0.0 and m.score_terms == {"grounding": 0.0, "question": 0.0}
            continue
        mean = lambda lp: sum(lp) / len(lp)  # noqa: E731
        with_text = mean(teacher_forced(b, prefix, out))
        before_segment = mean(teacher_forced(b, plan.full_ids[:start] + plan.margin_prompt_ids, out))
        without_question = mean(teacher_forced(b, plan.full_ids[:end] + free, out))
        assert m.score_terms is not None
        assert m.score_terms["grounding"] == pytest.approx(with_text - before_segment, abs=2e-3)
        assert m.score_terms["question"] == pytest.approx(with_text - without_question, abs=2e-3)
        expected = (with_text - before_segment) + QUESTION_WEIGHT * (with_text - without_question)
        assert m.score == pytest.approx(expected, abs=3e-3)
        assert m.relevant == (m.score >= wim.config.threshold)
        checked += 1
    assert checked


def test_question_pmi_scores_in_one_packed_pass_reusing_the_prompts_computed_aside(tiny_backends, monkeypatch):
    """One score_rows call per group: every margin's two baseline rows together, each starting from a margin prompt
    computed aside (its question-free row from the head of the prompt computed at its own segment's end)."""
    b = tiny_backends["llama"]
    calls: list[list] = []
    real = type(b).score_rows

    def spy(self, cache, rows, next_ids=(), tails=None):
        calls.append(list(rows))
        return real(self, cache, rows, next_ids, tails)

    monkeypatch.setattr(type(b), "score_rows", spy)
    wim = WiM(b, config=CFG.with_updates(classification="question_pmi"), document_cache=None)
    plan = wim.plan(SAMPLE, QUESTION)
    result = wim.run(SAMPLE, QUESTION, margin_batch_size=8)
    n = sum(1 for m in result.margins if m.n_tokens)
    assert len(calls) == 1 and len(calls[0]) == 2 * n
    before, free = calls[0][:n], calls[0][n:]
    assert all(r.aside is not None for r in calls[0][1:])  # all but the first segment's baseline (no prompt before it)
    assert [r.prefix_length for r in free] == plan.segment_ends[:n]
    assert all(list(r.aside.prompt_ids) == plan.margin_head_ids for r in free)
    assert all(list(r.prompt_ids[: len(plan.margin_prompt_ids)]) == plan.margin_prompt_ids for r in before)


def test_question_pmi_packed_step_by_step_and_cache_hit_agree(tiny_backend):
    from wim_integrations import DocumentCache

    cfg = CFG.with_updates(classification="question_pmi")
    seq = WiM(tiny_backend, config=cfg, document_cache=None).run(SAMPLE, QUESTION, margin_batch_size=1)
    wim = WiM(tiny_backend, config=cfg, document_cache=DocumentCache(max_bytes=1 << 28))
    packed = wim.run(SAMPLE, QUESTION, margin_batch_size=3)
    hit = wim.run(SAMPLE, QUESTION, margin_batch_size=2)
    assert hit.timings.context_cache == "hit"
    for other in (packed, hit):
        assert [m.text for m in other.margins] == [m.text for m in seq.margins]
        assert [m.score for m in other.margins] == pytest.approx([m.score for m in seq.margins], abs=2e-3)
        for a, c in zip(other.margins, seq.margins, strict=True):
            assert a.score_terms == pytest.approx(c.score_terms, abs=2e-3)


def _cache_with(b, ids):
    cache = b.new_cache()
    b.prefill(cache, ids)
    return cache


@pytest.mark.parametrize("mode", ["segment_pmi", "question_pmi", "pmi", "calibrated", "lexical"])
def test_packed_and_step_by_step_reads_give_the_same_scores(tiny_backend, mode):
    wim = WiM(tiny_backend, config=CFG.with_updates(classification=mode, margin_scope="segment"))
    seq = wim.run(SAMPLE, QUESTION, margin_batch_size=1)
    packed = wim.run(SAMPLE, QUESTION, margin_batch_size=3)
    assert [m.text for m in seq.margins] == [m.text for m in packed.margins]
    assert [m.score for m in packed.margins] == pytest.approx([m.score for m in seq.margins], abs=2e-3)
    assert all(m.score is not None for m in seq.margins)


@pytest.mark.parametrize("mode", ["segment_pmi", "pmi"])
def test_a_document_cache_hit_gives_the_scores_of_a_fresh_read(tiny_backend, mode):
    from wim_integrations import DocumentCache

    cfg = CFG.with_updates(classification=mode)
    fresh = WiM(tiny_backend, config=cfg).run(SAMPLE, QUESTION)
    wim = WiM(tiny_backend, config=cfg, document_cache=DocumentCache(max_bytes=1 << 28))
    wim.run(SAMPLE, "What is the code of the gate?", margin_batch_size=2)  # stores the document
    hit = wim.run(SAMPLE, QUESTION, margin_batch_size=2)
    assert hit.timings.context_cache == "hit"
    assert [m.text for m in hit.margins] == [m.text for m in fresh.margins]
    assert [m.score for m in hit.margins] == pytest.approx([m.score for m in fresh.margins], abs=2e-3)


def test_calibrated_score_is_the_first_reply_tokens_yes_no_log_odds_minus_a_content_free_margins(tiny_backend):
    b = tiny_backend
    wim = WiM(b, config=CFG)
    clf = MarginClassifier(b, wim.frame, wim.prompts.classification, QUESTION, 4)
    margins = ["The keeper is Ines Marlowe.", "Paris is the capital of France."]
    yes, no = clf._verdict_tokens()
    assert yes and no and not set(yes) & set(no)

    def log_odds(text: str) -> float:
        logp = plain_logprobs(b, clf.prompt_ids(text))[-1]
        lse = lambda ts: float(torch.logsumexp(logp[ts], 0))  # noqa: E731
        return lse(yes) - lse(no)

    expected = [log_odds(m) - log_odds(CONTENT_FREE_MARGIN) for m in margins]
    assert clf.calibrated_scores(margins) == pytest.approx(expected, abs=2e-3)
    assert clf.calibrated_scores([CONTENT_FREE_MARGIN]) == pytest.approx([0.0], abs=1e-4)


def test_threshold_decides_relevance(tiny_backend):
    wim = WiM(tiny_backend, config=CFG)
    keep_all = wim.run(SAMPLE, QUESTION, relevance_threshold=-1e9)
    keep_none = wim.run(SAMPLE, QUESTION, relevance_threshold=1e9)
    assert all(m.relevant for m in keep_all.margins)
    assert not any(m.relevant for m in keep_none.margins)
    # The second run reads from the document cache (packed rows over the stored cache): float rounding apart, the same.
    assert [m.score for m in keep_all.margins] == pytest.approx([m.score for m in keep_none.margins], abs=1e-5)


def test_lexical_score_counts_names_and_numbers_found_in_the_segment():
    segment = "The keeper of the lighthouse is Ines Marlowe. The gate code is 4417."
    q = "Who keeps the Corran lighthouse?"
    assert lexical_terms("The keeper is Ines Marlowe, code 4417.", q) == ["Ines", "Marlowe", "4417"]
    assert lexical_score("The keeper is Ines Marlowe, code 4417.", segment, q) == 1.0
    assert lexical_score("The keeper is Ines Varga.", segment, q) == 0.5  # the invented surname is not there
    assert lexical_score("Nothing relevant.", segment, q) == 0.0  # states nothing specific
    assert lexical_score("The Corran lighthouse has a keeper.", segment, q) == 0.0  # only the question's own words
    assert lexical_score("Code 441.", segment, q) == 0.0  # numbers match whole, not as a prefix


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"classification": "lexical", "relevance_threshold": 1.5}, "between 0 and 1"),
        ({"classification": "pmi", "relevance_threshold": math.nan}, "finite"),
        ({"classification": "inline", "relevance_threshold": 0.2}, "score-based"),
    ],
)
def test_bad_threshold_settings_raise_before_any_forward_pass(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        WiMConfig(**changes)


def test_empty_margin_scores_zero(tiny_backend):
    from wim_integrations.reading.scoring import MarginDraft, PMIScorer

    wim = WiM(tiny_backend, config=CFG)
    plan = wim.plan(SAMPLE, QUESTION)
    scorer = PMIScorer(tiny_backend, plan.head_ids, plan.margin_prompt_ids)
    assert scorer.score([MarginDraft("", [], [], "text")]) == [0.0]


def test_auxiliary_without_a_classifier_model_is_refused_before_reading(tiny_backend):
    wim = WiM(tiny_backend, config=CFG)
    with pytest.raises(WiMInputError, match="classifier model"):
        wim.stream(SAMPLE, QUESTION, classification="auxiliary")


def test_segment_pmi_needs_packed_rows_and_the_default_falls_back_to_pmi(tiny_backends, monkeypatch):
    b = tiny_backends["llama"]
    monkeypatch.setattr(type(b), "supports_packed", property(lambda self: False))  # as with sliding-window layers
    wim = WiM(b)  # the default config: classification left unset
    assert wim.plan(SAMPLE, QUESTION).config.classification == "pmi"
    for mode in ("segment_pmi", "question_pmi"):  # asked for explicitly: refused, the alternative named
        with pytest.raises(WiMInputError, match=f"classification='{mode}'.*use classification='pmi'"):
            wim.plan(SAMPLE, QUESTION, WiMConfig(classification=mode))


def test_judge_terms_equal_plain_forward_passes_on_the_judge_model(tiny_backends):
    """classification="judge" with another model as the judge (tiny Qwen2 judging tiny Llama's margins): the main
    model's terms are question_pmi's, and the judge's verdict and relevance equal log-odds and mean log P recomputed
    by plain forward passes of the judge model over each whole prompt."""
    from wim_integrations.config import JUDGE_WEIGHTS
    from wim_integrations.reading.judge_model import JudgeTerms, bos_ids

    main, judge = tiny_backends["llama"], tiny_backends["qwen2"]
    cfg = CFG.with_updates(classification="judge")
    wim = WiM(main, config=cfg, judge=judge)
    assert wim.judge is judge and wim.with_options().judge is judge
    result = wim.run(SAMPLE, QUESTION)
    qp = wim.run(SAMPLE, QUESTION, config=CFG.with_updates(classification="question_pmi"))
    assert result.margins and [m.text for m in result.margins] == [m.text for m in qp.margins]
    enc, bos = judge.encode_text, bos_ids(judge)
    ask = enc("\nDoes the note answer the question? Answer (Yes or No):")

    def log_odds(note: str) -> float:
        ids = bos + enc(f"Question: {QUESTION}\nNote:") + enc(" " + note) + ask
        logp = plain_logprobs(judge, ids)[-1]
        yes, no = (
            [t for t in _words_first_tokens(judge, w) if t not in _words_first_tokens(judge, o)]
            for w, o in ((YES, NO), (NO, YES))
        )
        return float(torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0))

    def mean_lp(head: str, note: str) -> float:
        ids = enc(" " + note)
        return sum(teacher_forced(judge, bos + enc(head), ids)) / len(ids)

    for m, q in zip(result.margins, qp.margins, strict=True):
        assert m.score_terms is not None and q.score_terms is not None
        t = JudgeTerms(**m.score_terms)
        # The same rows as question_pmi's run; that run read the document from the document cache, so its float
        # sums may differ in the last bits (4.5e-7 seen in CI), far below what a wrong prefix changes.
        want_terms = (q.score_terms["grounding"], q.score_terms["question"])
        assert (t.grounding, t.question) == pytest.approx(want_terms, abs=1e-4)
        if not m.text.strip():
            assert (t.verdict, t.relevance) == (0.0, 0.0)
            continue
        assert t.verdict == pytest.approx(log_odds(m.text) - log_odds(CONTENT_FREE_MARGIN), abs=2e-3)
        want = mean_lp(f"Question: {QUESTION}\nNote:", m.text) - mean_lp("Note:", m.text)
        assert t.relevance == pytest.approx(want, abs=2e-3)
        assert m.score == pytest.approx(t.combined(JUDGE_WEIGHTS))
        assert m.relevant == (m.score >= cfg.threshold)


YES = (" Yes", " yes", " YES", "Yes", "yes")
NO = (" No", " no", " NO", "No", "no")


def _words_first_tokens(backend, words) -> set[int]:
    return {backend.encode_text(w)[0] for w in words}


def test_judge_mode_without_a_judge_is_refused_before_reading(tiny_backend):
    with pytest.raises(WiMInputError, match="classification='judge' needs a judge model"):
        WiM(tiny_backend, config=CFG.with_updates(classification="judge")).plan(SAMPLE, QUESTION)
    with pytest.raises(WiMInputError, match=r"judge='int'"):
        WiM(tiny_backend, judge=42)
