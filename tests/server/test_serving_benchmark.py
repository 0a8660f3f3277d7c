"""benchmarks/serving.py's margin relevance: each margin's truth is whether its segment holds the question's planted
code, and precision / recall / F1 follow from the verdicts. Run against the fake vLLM server (fake_engines.py)."""

from __future__ import annotations

import pytest
from fake_engines import FakeVLLM

from benchmarks.serving import make_document, margin_f1, wim_run
from wim_integrations import WiM, WiMConfig

CFG = WiMConfig(segment_tokens=200, margin_max_new_tokens=6, answer_max_new_tokens=6, margin_stop="eos")


@pytest.mark.parametrize("question", [0, 1])
def test_the_code_segment_is_the_truth_and_keeping_every_margin_has_full_recall(tiny_backends, question: int) -> None:
    tokenizer = tiny_backends["llama"].tokenizer
    with FakeVLLM(tokenizer) as engine:
        wim = WiM.from_server(engine.url, tokenizer=tokenizer, engine="vllm", config=CFG)
        try:
            cfg = CFG.model_copy(update={"classification": "none"})  # every margin kept
            doc = make_document(wim, 5, cfg, seed=3)
            out = wim_run(wim, doc, doc.questions[question], cfg)
            plan = wim.plan(doc.text, doc.questions[question], cfg)
        finally:
            wim.backend.close()  # type: ignore[attr-defined]
    verdicts = out["margin_verdicts"]
    assert len(verdicts) == plan.n_segments == 5
    # The segment whose text holds the code, found by searching the text: the truth (a fact cut by a segment border
    # counts for both sides, so at most one more).
    code = doc.answers[question]
    holding = [i for i, seg in enumerate(plan.context.segments) if code in seg.text]
    truth = [i for i, v in enumerate(verdicts) if v["truth"]]
    assert len(holding) == 1 and holding[0] in truth and len(truth) <= 2, (holding, truth)
    assert all(v["relevant"] for v in verdicts)
    assert out["margin_recall"] == 1.0
    assert out["margin_precision"] == pytest.approx(len(truth) / 5)
    assert out["margin_f1"] == pytest.approx(2 * (len(truth) / 5) / (len(truth) / 5 + 1))


def test_f1_of_hand_made_verdicts() -> None:
    def v(truth: bool, relevant: bool) -> dict[str, object]:
        return {"truth": truth, "relevant": relevant, "score": None, "hallucinated": False}

    # kept: 2 true, 1 false; missed: 1 true. precision 2/3, recall 2/3.
    got = margin_f1([v(True, True), v(True, True), v(False, True), v(True, False), v(False, False)])
    assert got["margin_precision"] == pytest.approx(2 / 3)
    assert got["margin_recall"] == pytest.approx(2 / 3)
    assert got["margin_f1"] == pytest.approx(2 / 3)
    assert got["margin_auc"] is None  # no scores


@pytest.mark.parametrize("overlap", [False, True])
def test_the_request_timeline_logs_every_request_of_a_run_in_its_order(tiny_backends, overlap: bool) -> None:
    from benchmarks.request_timeline import timed

    tokenizer = tiny_backends["llama"].tokenizer
    with FakeVLLM(tokenizer, token_delay=0.002) as engine:
        wim = WiM.from_server(engine.url, tokenizer=tokenizer, engine="vllm", config=CFG)
        try:
            cfg = CFG.with_updates(classification="segment_pmi", overlap=overlap or None)
            doc = make_document(wim, 4, cfg, seed=1)
            log = timed(wim.backend)  # type: ignore[arg-type]
            result = wim.run(doc.text, doc.questions[0], config=cfg)
        finally:
            wim.backend.close()  # type: ignore[attr-defined]
    kinds = [k for k, *_ in sorted(log, key=lambda e: e[2])]
    assert len(log) == len(wim.backend.requests)  # type: ignore[attr-defined]
    assert kinds.count("warm") == (result.n_segments if overlap else 1)
    assert kinds.count("stream") == result.n_segments + 1  # the margins and the answer
    assert kinds.count("score") == sum(bool(m.text) for m in result.margins)
    assert kinds[0] == "warm" and kinds[-1] == "stream"
    assert all(0 <= start <= end for _, _, start, end in log)
