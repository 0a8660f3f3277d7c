"""Deterministic long-document tasks with planted facts, sized in model tokens.

Every task is generated from a seed: the same (kind, length, depth, seed) always gives the same document, question
and answer. Filler is natural-looking village prose built from our own phrase lists; the planted facts use words that
never occur in the filler (codes, invented town names, people's names, bAbI rooms), so an answer cannot be guessed
from the filler, and every fact occurs exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

TokenCounter = Callable[[str], int]

# -- filler ---------------------------------------------------------------------------------------------------------
_SUBJECTS = (
    "The old miller",
    "A young shepherd",
    "The river",
    "The village council",
    "An elderly weaver",
    "The northern wind",
    "A travelling merchant",
    "The schoolteacher",
    "The lighthouse keeper",
    "A flock of geese",
    "The baker's apprentice",
    "The parish priest",
    "A pair of foxes",
    "The blacksmith",
    "The harbour master",
    "A group of children",
    "The widow at the crossroads",
    "The carpenter",
    "The evening fog",
    "A wandering fiddler",
    "The orchard owner",
    "The ferryman",
    "A quiet stranger",
    "The innkeeper",
    "The stonemason",
)
_PREDICATES = (
    "spoke at length about the coming harvest",
    "watched the clouds gather over the hills",
    "carried baskets of apples down the lane",
    "mended the fence by the meadow",
    "sang an old song about the sea",
    "walked slowly along the muddy road",
    "counted the sheep twice",
    "repaired the roof of the chapel",
    "complained about the price of flour",
    "gathered reeds along the bank",
    "told stories about the long winter",
    "swept the steps of the square",
    "painted the shutters a pale colour",
    "listened to the bells across the valley",
    "waited patiently for the cart",
    "brought bread to the neighbours",
    "argued about the width of the bridge",
    "planted beans in neat rows",
    "rested under the great oak",
    "traded wool for salt and candles",
    "lit the lamps along the quay",
    "fed the horses in the stable yard",
    "studied the old maps of the coast",
    "cleared the ditch after the storm",
    "polished the brass bell",
)
_ENDINGS = (
    "before the evening bells rang",
    "while the fog lifted from the valley",
    "as it had done for many seasons",
    "without saying a word to anyone",
    "when the first frost arrived",
    "long after the market had closed",
    "under a sky the colour of slate",
    "while the dogs slept by the door",
    "as the tide went out",
    "despite the steady rain",
    "in the soft light of the morning",
    "before anyone else was awake",
    "while the kettle boiled",
    "as the swallows returned",
    "with great care and little hurry",
)
_ASIDES = (
    "Nobody in the village thought this unusual.",
    "The days were growing shorter.",
    "Smoke rose from the chimneys in thin grey lines.",
    "Somewhere a door creaked in the wind.",
    "The road to the coast was quiet that week.",
    "Such things had always been done this way.",
    "The meadow smelled of wet grass and clover.",
    "Few travellers passed through in that season.",
    "The church clock was, as usual, a little slow.",
    "Later, people would remember it fondly.",
)


def filler_sentence(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(_ASIDES)
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_PREDICATES)} {rng.choice(_ENDINGS)}."


# -- fact vocabularies (disjoint from the filler) -------------------------------------------------------------------
_COLORS = ("amber", "cobalt", "crimson", "ivory", "jade", "scarlet", "violet", "copper", "indigo", "saffron")
_VAULTS = ("vault", "locker", "strongbox", "safe", "cabinet", "archive")
_NAMES = (
    "Mary",
    "John",
    "Sandra",
    "Daniel",
    "Alice",
    "Victor",
    "Helena",
    "Oscar",
    "Petra",
    "Rupert",
    "Yusuf",
    "Ingrid",
)
_ITEMS = ("silver compass", "blue notebook", "brass telescope", "velvet pouch", "clay whistle", "glass prism")
_ROOMS = ("kitchen", "garden", "office", "bathroom", "hallway", "bedroom")
_SYLLABLES = ("bra", "vel", "mor", "tis", "kan", "dor", "lun", "pex", "zar", "quo", "fen", "gil", "ros", "tam", "vik")


def invented_word(rng: random.Random, n_syllables: int = 3) -> str:
    """A pronounceable word that is in no dictionary (and not in the filler)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(n_syllables))


# -- documents ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlantedFact:
    text: str
    requested_depth: float  # fraction of the document's tokens before the fact
    start_char: int
    start_token: int  # tokens of the document text before the fact
    needed: bool = True  # whether answering needs this fact (False: a decoy or another person's move)


@dataclass(frozen=True)
class Task:
    id: str
    kind: str
    context: str
    question: str
    answers: tuple[str, ...]  # gold answer(s); all required for aggregation
    candidates: tuple[str, ...]  # every answer-like string the document offers (scoring rejects other candidates)
    length: int  # requested length in tokens
    n_tokens: int  # measured length
    depth: float | None  # requested depth of the key fact; None for tasks without one
    seed: int
    answer_tokens: int  # generation budget for the answer
    facts: tuple[PlantedFact, ...] = field(default=())


def build_document(
    rng: random.Random, count: TokenCounter, n_tokens: int, facts: Sequence[tuple[float, str]]
) -> tuple[str, list[PlantedFact]]:
    """Filler of about `n_tokens` tokens with each (depth, sentence) fact inserted at that depth, in tokens."""
    fact_tokens = sum(count(" " + text) for _, text in facts)
    sentences: list[str] = []
    sizes: list[int] = []
    total = 0
    goal = n_tokens - fact_tokens
    while total < goal:
        s = filler_sentence(rng)
        size = count(" " + s)
        if total + size - goal > goal - total:  # stop at whichever end is nearer the requested length
            break
        sentences.append(s)
        sizes.append(size)
        total += size
    # Insert each fact at the first sentence boundary at or after its depth (deepest first keeps indices valid).
    slots: list[tuple[int, int]] = []
    for i, (depth, _) in enumerate(facts):
        target, acc, at = depth * n_tokens, 0, 0
        while at < len(sentences) and acc + sizes[at] / 2 < target:  # nearest boundary
            acc += sizes[at]
            at += 1
        slots.append((at, i))
    pieces: list[tuple[str, int | None]] = [(s, None) for s in sentences]
    for at, i in sorted(slots, reverse=True):
        pieces.insert(at, (facts[i][1], i))
    # Paragraphs of 4-7 sentences.
    text_parts: list[str] = []
    starts: dict[int, int] = {}
    pos, in_par, par_len = 0, 0, rng.randint(4, 7)
    for j, (s, fact_index) in enumerate(pieces):
        if j:
            sep = "\n\n" if in_par >= par_len else " "
            if sep == "\n\n":
                in_par, par_len = 0, rng.randint(4, 7)
            text_parts.append(sep)
            pos += len(sep)
        if fact_index is not None:
            starts[fact_index] = pos
        text_parts.append(s)
        pos += len(s)
        in_par += 1
    text = "".join(text_parts)
    planted = [PlantedFact(facts[i][1], facts[i][0], starts[i], count(text[: starts[i]])) for i in range(len(facts))]
    return text, planted


def _rng(kind: str, length: int, depth: float | None, seed: int) -> random.Random:
    return random.Random(f"{kind}|{length}|{depth}|{seed}")  # str seeds are hashed with sha512: stable across runs


def _task(
    kind: str,
    count: TokenCounter,
    text: str,
    *,
    length: int,
    seed: int,
    depth: float | None = None,
    answer_tokens: int = 20,
    **fields: Any,
) -> Task:
    """A task with the fields every kind derives the same way: id, kind, measured length."""
    at = f"-d{depth:g}" if depth is not None else ""
    return Task(
        id=f"{kind}-L{length}{at}-s{seed}",
        kind=kind,
        context=text,
        length=length,
        n_tokens=count(text),
        depth=depth,
        seed=seed,
        answer_tokens=answer_tokens,
        **fields,
    )


def needle_task(count: TokenCounter, length: int, depth: float, seed: int = 0) -> Task:
    """Single needle: one secret code planted at `depth`; the lost-in-the-middle probe."""
    rng = _rng("needle", length, depth, seed)
    key = f"{rng.choice(_COLORS)} {rng.choice(_VAULTS)}"
    code = str(rng.randint(1000, 9999))
    fact = f"The secret code for the {key} is {code}."
    text, planted = build_document(rng, count, length, [(depth, fact)])
    return _task(
        "needle",
        count,
        text,
        length=length,
        seed=seed,
        depth=depth,
        question=f"What is the secret code for the {key}? Answer with the code only.",
        answers=(code,),
        candidates=(code,),
        facts=tuple(planted),
    )


def multihop_task(count: TokenCounter, length: int, seed: int = 0, depths: tuple[float, float] = (0.2, 0.75)) -> Task:
    """Two hops in different parts of the text (who received the item, then where that person lives) + a distractor."""
    rng = _rng("multihop", length, None, seed)
    giver, receiver, other = rng.sample(_NAMES, 3)
    item = rng.choice(_ITEMS)
    town, decoy = invented_word(rng).capitalize(), invented_word(rng).capitalize()
    while decoy == town:
        decoy = invented_word(rng).capitalize()
    facts = [
        (depths[0], f"{giver} gave the {item} to {receiver}."),
        ((depths[0] + depths[1]) / 2, f"{other} lives in the town of {decoy}."),
        (depths[1], f"{receiver} lives in the town of {town}."),
    ]
    text, planted = build_document(rng, count, length, facts)
    planted[1] = replace(planted[1], needed=False)  # the decoy
    return _task(
        "multihop",
        count,
        text,
        length=length,
        seed=seed,
        question=f"{giver} gave the {item} to someone. In which town does that person live? Answer with the town only.",
        answers=(town,),
        candidates=(town, decoy),
        facts=tuple(planted),
    )


def location_task(count: TokenCounter, length: int, seed: int = 0, n_moves: int = 6) -> Task:
    """BABILong-style tracking: people move between rooms across the text; where is the target at the end?"""
    rng = _rng("location", length, None, seed)
    target, *others = rng.sample(_NAMES[:6], 3)
    movers = [target, target] + [rng.choice([target, *others, *others]) for _ in range(n_moves - 2)]
    rng.shuffle(movers)
    if movers[-1] != target:  # make the target's last move land late, after distractor moves of others
        movers[-2:] = [target, rng.choice(others)]
    verbs = ("went to", "moved to", "travelled to", "walked into", "journeyed to")
    where: dict[str, str] = {}
    facts = []
    for i, who in enumerate(movers):
        room = rng.choice([r for r in _ROOMS if r != where.get(who)])
        where[who] = room
        facts.append(((i + 0.5) / n_moves, f"{who} {rng.choice(verbs)} the {room}."))
    text, planted = build_document(rng, count, length, facts)
    planted = [replace(f, needed=who == target) for f, who in zip(planted, movers, strict=True)]
    return _task(
        "location",
        count,
        text,
        length=length,
        seed=seed,
        question=f"Where is {target} at the end of the text? Answer with the room only.",
        answers=(where[target],),
        candidates=_ROOMS,
        facts=tuple(planted),
    )


def common_words_task(count: TokenCounter, length: int, seed: int = 0, n_common: int = 5) -> Task:
    """RULER-style Common Words Extraction: a numbered word list; name the `n_common` most frequent words."""

    def build(n_entries: int) -> tuple[str, list[str], list[str]]:
        rng = _rng("cwe", length, None, seed)
        vocab: list[str] = []
        while len(vocab) < n_entries:  # more than enough distinct invented words
            w = invented_word(rng, 2)
            if w not in vocab:
                vocab.append(w)
            if len(vocab) >= len(_SYLLABLES) ** 2:
                break
        common, rare = vocab[:n_common], vocab[n_common:]
        common_freq = max(4, round(0.3 * n_entries / n_common))
        n_rare_entries = max(0, n_entries - common_freq * n_common)
        rare_freq = max(1, min(common_freq // 2, -(-n_rare_entries // max(1, len(rare)))))
        n_rare_words = min(len(rare), -(-n_rare_entries // rare_freq))
        words = common * common_freq + rare[:n_rare_words] * rare_freq
        rng.shuffle(words)
        return "\n".join(f"{i}. {w}" for i, w in enumerate(words, 1)), common, vocab

    n_entries = max(20, length // 5)
    for _ in range(3):  # rescale the entry count to the measured length
        text, common, vocab = build(n_entries)
        n_entries = max(20, round(n_entries * length / count(text)))
    text, common, vocab = build(n_entries)
    return _task(
        "cwe",
        count,
        text,
        length=length,
        seed=seed,
        answer_tokens=32,
        question=(
            f"The text is a numbered list of words. Which {n_common} words appear most often in it? "
            f"Answer with the {n_common} words only, separated by commas."
        ),
        answers=tuple(common),
        candidates=tuple(vocab),
    )


KINDS = ("needle", "multihop", "location", "cwe")


def make_tasks(
    count: TokenCounter,
    lengths: Sequence[int],
    depths: Sequence[float],
    kinds: Sequence[str] = KINDS,
    seeds: Sequence[int] = (0,),
) -> list[Task]:
    """All tasks of a preset: needles at every depth, one instance of each other kind, per length and seed."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown task kind(s) {sorted(unknown)}; known: {list(KINDS)}")
    tasks: list[Task] = []
    for length in lengths:
        for seed in seeds:
            if "needle" in kinds:
                tasks += [needle_task(count, length, d, seed) for d in depths]
            if "multihop" in kinds:
                tasks.append(multihop_task(count, length, seed))
            if "location" in kinds:
                tasks.append(location_task(count, length, seed))
            if "cwe" in kinds:
                tasks.append(common_words_task(count, length, seed))
    return tasks
