"""The retrieval benchmark: its tasks (facts in the pieces they claim) and one tiny run of every system."""

from __future__ import annotations

import pytest

from benchmarks.retrieval import KINDS, SYSTEMS, main, make_task, run, table


def count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("kind", KINDS)
def test_tasks_hold_their_facts_where_they_say(kind):
    task = make_task(count, kind, 8, 3)
    assert task == make_task(count, kind, 8, 3)  # deterministic
    assert len(task.pieces) == 8 and len(task.holding) == (1 if kind == "needle" else 2)
    for i, piece in enumerate(task.pieces):
        holds = "secret code" in piece or "gave the" in piece or "lives in the town" in piece
        assert holds == (i in task.holding)
    assert any(task.answer in task.pieces[i] for i in task.holding)
    assert all(task.answer not in p for i, p in enumerate(task.pieces) if i not in task.holding)


def test_a_tiny_run_reports_every_system(tiny_wim, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    records = run(tiny_wim.with_options(config=tiny_wim.config.with_updates(segment_tokens=200)), [2], 1, out)
    assert {(r["kind"], r["system"]) for r in records} == {(k, s) for k in KINDS for s in SYSTEMS}
    none = [r for r in records if r["system"] == "none"]
    assert all(r["recall"] == 1.0 and r["kept_share"] == 1.0 for r in none)
    perfect = [r for r in records if r["system"] == "holding_only"]
    assert perfect and all(r["kept"] == sorted(r["holding"]) and r["recall"] == 1.0 for r in perfect)
    assert all(0.0 <= r["recall"] <= 1.0 and set(r["kept"]) <= {0, 1} for r in records)
    assert main(["--report", str(out)]) == 0
    assert capsys.readouterr().out.strip() == table(records)
    for r in records:
        if r["system"] == "compressor_hops":  # the margins' pieces, and those the hop's lifts reach the threshold
            hopped = {i for i, v in enumerate(r["lifts"]) if v is not None and v >= r["hop_threshold"]}
            assert r["kept"] == sorted({*r["margin_kept"], *hopped})
            assert all((v is None) == (i in r["margin_kept"]) for i, v in enumerate(r["lifts"]))
            plain = next(c for c in records if c["task"] == r["task"] and c["system"] == "compressor")
            assert r["margin_kept"] == plain["kept"]


def test_the_probability_chain_filter_keeps_the_pieces_whose_yes_outweighs_no(tiny_wim):
    from langchain_classic.retrievers.document_compressors.chain_filter import _get_default_chain_prompt

    from benchmarks.retrieval import _chain_filter, yes_no_log_odds

    b = tiny_wim.backend
    task = make_task(lambda t: len(b.encode_text(t)), "two_hop", 4, 1)
    got = _chain_filter(b, task, by_probability=True)
    # each piece's log-odds on its own, through LangChain's own prompt: the same values, in retrieval order
    prompt, odds = _get_default_chain_prompt(), yes_no_log_odds(b)
    alone = [odds(prompt.invoke({"question": task.question, "context": p})) for p in task.pieces]
    assert got.piece_scores == pytest.approx(alone, abs=1e-4)
    assert got.kept == [i for i, v in enumerate(alone) if v > 0]


def test_the_text_chain_filter_keeps_what_its_replies_say_yes_to(tiny_wim, monkeypatch):
    import benchmarks.retrieval as retrieval

    b = tiny_wim.backend
    task = make_task(lambda t: len(b.encode_text(t)), "needle", 4, 0)
    replies = iter(["YES, it is.", "No.", "The context is relevant", "yes"])  # the third parses as neither: dropped
    monkeypatch.setattr(b, "decode", lambda ids: next(replies))
    got = retrieval._chain_filter(b, task, by_probability=False)
    assert got.kept == [0, 3]
    assert got.notes == ["YES, it is.", "No.", "The context is relevant", "yes"]


def test_question_lift_judges_each_piece_alone(tiny_wim):
    from benchmarks.retrieval_rules import question_lift

    b = tiny_wim.backend
    task = make_task(lambda t: len(b.encode_text(t)), "needle", 4, 2)
    lifts = question_lift(b, [*task.pieces, ""], task.question)
    assert lifts[-1] == pytest.approx(0.0, abs=1e-4)  # no text: the question as likely as without a piece
    assert question_lift(b, task.pieces[::-1], task.question) == pytest.approx(lifts[:-1][::-1], abs=1e-4)


def test_rules_are_scored_per_k_and_kind():
    from benchmarks.retrieval_rules import evaluate

    tasks = [
        {"k": 4, "kind": "needle", "holding": [1], "scores": [0.1, 0.9, 0.2, 0.0]},
        {"k": 4, "kind": "two_hop", "holding": [0, 3], "scores": [0.8, 0.1, 0.2, 0.15]},
    ]
    cells = evaluate(tasks, lambda s: {i for i, v in enumerate(s) if v >= 0.15})
    assert cells[(4, "needle")] == (1.0, 0.5, 1)
    assert cells[(4, "two_hop")] == (1.0, 0.75, 1)
    assert cells[("all", "all")] == (1.0, 0.625, 2)


def test_hop_replay_and_answers_agree_with_the_compressor_run(tiny_wim, tmp_path):
    """Replaying the second hop on a compressor record gives what the compressor with hops=2 keeps (same lifts)."""
    from benchmarks.retrieval_rules import hop_answers, hop_kept, hop_rule_table, load_hops, replay_hops

    wim = tiny_wim.with_options(config=tiny_wim.config.with_updates(segment_tokens=200))
    results = tmp_path / "r.jsonl"
    records = run(wim, [3], [0], results, systems=["compressor", "compressor_hops"], hop_threshold=0.0)
    hops_file, answers = tmp_path / "hops.jsonl", tmp_path / "answers.jsonl"
    replay_hops(wim.backend, results, hops_file)
    replayed = load_hops(hops_file, range(1))
    direct = {r["task"]: r for r in records if r["system"] == "compressor_hops"}
    assert len(replayed) == len(direct) == len(KINDS)
    for r in replayed:
        assert r["margin_kept"] == direct[r["task"]]["margin_kept"]
        assert r["lifts"] == pytest.approx(direct[r["task"]]["lifts"], abs=1e-4)
        assert hop_kept(r, 0.0) == direct[r["task"]]["kept"]
    hop_answers(wim.backend, hops_file, 0.0, answers)
    answered = load_hops(answers, range(1))
    assert [a["kept"] for a in answered] == [hop_kept(r, 0.0) for r in replayed]
    assert "| margins |" in hop_rule_table(replayed, [], [0.0])
