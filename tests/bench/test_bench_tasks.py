"""Benchmark task generators: deterministic, sized in tokens, facts planted once at the requested depth."""

from __future__ import annotations

import re

import pytest

from benchmarks.tasks import (
    common_words_task,
    filler_sentence,
    location_task,
    make_tasks,
    multihop_task,
    needle_task,
)


@pytest.fixture(scope="module")
def count(tiny_backends):
    backend = tiny_backends["llama"]
    return lambda s: len(backend.encode_text(s))


@pytest.fixture(scope="module")
def sentence_tokens(count):
    """The longest filler sentence in tokens: placement is exact up to one sentence boundary."""
    import random

    rng = random.Random(0)
    return max(count(" " + filler_sentence(rng)) for _ in range(300))


def test_same_seed_same_tasks_other_seed_differs(count):
    a = make_tasks(count, [400], [0.2, 0.8], seeds=[3])
    b = make_tasks(count, [400], [0.2, 0.8], seeds=[3])
    c = make_tasks(count, [400], [0.2, 0.8], seeds=[4])
    assert [(t.id, t.context, t.question, t.answers) for t in a] == [
        (t.id, t.context, t.question, t.answers) for t in b
    ]
    assert [t.context for t in a] != [t.context for t in c]
    assert [t.kind for t in a] == ["needle", "needle", "multihop", "location", "cwe"]


@pytest.mark.parametrize("length", [300, 900])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_needle_lands_at_depth_once(count, sentence_tokens, length, depth):
    task = needle_task(count, length, depth, seed=1)
    (fact,) = task.facts
    assert task.n_tokens == count(task.context)
    assert abs(task.n_tokens - length) <= sentence_tokens
    # At the sentence boundary nearest the requested depth, measured in the model's tokens.
    assert abs(fact.start_token - depth * length) <= sentence_tokens / 2 + 5
    assert fact.start_token == count(task.context[: fact.start_char])
    assert task.context.count(fact.text) == 1
    (code,) = task.answers
    assert task.context.count(code) == 1 and code in fact.text
    assert re.findall(r"\d", task.context.replace(fact.text, "")) == []  # no other digits: nothing to confuse it with


def test_facts_not_guessable_from_filler():
    import random

    rng = random.Random(0)
    filler = " ".join(filler_sentence(rng) for _ in range(2000)).lower()
    for word in ("secret", "code", "kitchen", "garden", "office", "bathroom", "hallway", "bedroom", "lives in", "gave"):
        assert word not in filler


def test_multihop_hops_in_order_and_unique(count):
    task = multihop_task(count, 800, seed=2)
    gift, decoy, home = task.facts
    (town,) = task.answers
    assert gift.start_token < decoy.start_token < home.start_token
    assert home.start_token - gift.start_token > 0.4 * task.n_tokens  # far apart: different segments
    assert town in home.text and task.context.count(town) == 1
    receiver = gift.text.split(" to ")[1].rstrip(".")
    assert home.text.startswith(receiver) and not decoy.text.startswith(receiver)
    assert set(task.candidates) == {town, decoy.text.rsplit(" ", 1)[1].rstrip(".")}


def test_location_answer_is_targets_last_move(count):
    for seed in range(5):
        task = location_task(count, 600, seed=seed)
        target = task.question.split()[2]
        moves = [f.text for f in sorted(task.facts, key=lambda f: f.start_token) if f.text.startswith(target + " ")]
        assert len(moves) >= 2
        assert moves[-1].rstrip(".").endswith(task.answers[0])
        assert all(task.context.count(f.text) == 1 for f in task.facts)


def test_common_words_are_the_most_frequent(count):
    task = common_words_task(count, 700, seed=0)
    words = [line.split(". ", 1)[1] for line in task.context.splitlines()]
    freq = {w: words.count(w) for w in set(words)}
    top = sorted(freq, key=freq.get, reverse=True)[:5]
    assert set(top) == set(task.answers)
    assert min(freq[w] for w in task.answers) > max(f for w, f in freq.items() if w not in task.answers)
    assert abs(task.n_tokens - 700) <= 0.05 * 700
    assert set(freq) <= set(task.candidates)


def test_unknown_kind_is_rejected(count):
    with pytest.raises(ValueError, match="unknown task kind"):
        make_tasks(count, [300], [0.5], kinds=["needle", "haystack"])
