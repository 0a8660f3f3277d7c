"""A pure-Python backend: a character tokenizer and a deterministic toy "model", no torch / transformers / tokenizers.

Every character is one token (id `ord(c) + 10`); template text turns the literal "<|end|>" into the stop id 1. The
model's next-token distribution is a softmax over hash-derived scores of a small vocabulary (a few printable
characters and the stop id), the hash folding in the whole token history, so any change anywhere in what a row sees
changes what it writes. Log-probabilities are exact (the same float arithmetic on every path), so the engine's cache
tricks can be checked against plain recomputation with `==`.

The cache is a plain list of token ids: prefill appends, rollback truncates."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass

from wim_integrations.backends.base import (
    Capabilities,
    GenerationRequest,
    PackedRequest,
    PackedRow,
    RowScores,
    refuse_constraints,
)
from wim_integrations.config import SamplingConfig
from wim_integrations.prompts import PLAIN_PREFIX, PLAIN_SUFFIX, ChatFrame

STOP_ID = 1
END_TEXT = "<|end|>"
_OFFSET = 10
_MASK = (1 << 64) - 1
_SEED = 0x9E3779B97F4A7C15
# What the model can write: the stop id and a few characters (capitals and digits too, for lexical scoring). With
# one stop id in 22, margins of ~10 tokens end at a stop about a third of the time.
VOCAB: tuple[int, ...] = (STOP_ID, *(ord(c) + _OFFSET for c in "aeiou rstlnBCDM0123.,"))

FULL_CAPABILITIES = Capabilities(packed_rows=True, scoring="rows", generation_logprobs=True)


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of `x`."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def fold(state: int, ids: Sequence[int]) -> int:
    """The history hash after `ids` (start from `_SEED` for an empty history)."""
    for t in ids:
        state = _mix(state ^ (t * 0x100000001B3 & _MASK))
    return state


def history_state(ids: Sequence[int]) -> int:
    return fold(_SEED, ids)


def logprobs_at(state: int) -> dict[int, float]:
    """log P(next token) over `VOCAB` for a history whose hash is `state` (other ids have probability 0)."""
    scores = [((_mix(state ^ v) >> 20) % 1024) / 256 for v in VOCAB]
    top = max(scores)
    norm = top + math.log(sum(math.exp(s - top) for s in scores))
    return {v: s - norm for v, s in zip(VOCAB, scores, strict=True)}


def logprob(state: int, token: int) -> float:
    return logprobs_at(state).get(token, -math.inf)


def _pick(dist: dict[int, float], sampling: SamplingConfig, rng: random.Random | None) -> int:
    if rng is None:  # greedy: the first most likely id
        return max(VOCAB, key=lambda v: dist[v])
    ranked = sorted(VOCAB, key=lambda v: -dist[v])
    if sampling.top_k:
        ranked = ranked[: sampling.top_k]
    weights = [math.exp(dist[v] / sampling.temperature) for v in ranked]
    return rng.choices(ranked, weights)[0]


def _rng(sampling: SamplingConfig) -> random.Random | None:
    return random.Random(sampling.seed) if sampling.do_sample else None


@dataclass
class _Row:
    """One running row of `generate_packed`: its history hash and what it wrote."""

    state: int
    tokens: list[int]
    rng: random.Random | None
    running: bool = True


class FakeBackend:
    """The `Backend` protocol with packed rows and row scoring, in pure Python (see the module docstring)."""

    def __init__(
        self,
        capabilities: Capabilities = FULL_CAPABILITIES,
        *,
        native_chat: bool = True,
        name: str = "fake",
        max_context_tokens: int | None = 100_000,
    ) -> None:
        self.name = name
        self.lock = threading.RLock()
        self.max_context_tokens = max_context_tokens
        self.rollback_limit: int | None = None
        self.stop_ids = frozenset({STOP_ID})
        self.capabilities = capabilities
        self.native_chat = native_chat
        self.packed_calls = 0  # generate_packed calls, to tell which reading path the engine took

    # -- tokens ---------------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return [ord(c) + _OFFSET for c in text]

    def encode_template(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(END_TEXT)):
            if i:
                ids.append(STOP_ID)
            ids.extend(self.encode_text(part))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        return self.encode_text(text), list(range(len(text)))

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(t - _OFFSET) for t in ids if t >= _OFFSET)  # special ids skipped, as HF's decode does

    def chat_frame(self) -> ChatFrame:
        if self.native_chat:
            return ChatFrame("<user>", f"{END_TEXT}<assistant>", native=True)
        return ChatFrame(PLAIN_PREFIX, PLAIN_SUFFIX, native=False)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        if not self.native_chat:
            return PLAIN_PREFIX + "\n\n".join(m["content"] for m in messages) + PLAIN_SUFFIX
        return "".join(f"<{m['role']}>{m['content']}{END_TEXT}" for m in messages) + "<assistant>"

    def min_tokens(self, n_bytes: int) -> int | None:
        return (n_bytes + 3) // 4  # one token per character, at most 4 UTF-8 bytes each

    def stream_decoder(self) -> Callable[[int], str | None] | None:
        return None

    # -- the cache ------------------------------------------------------------------------------------------
    def new_cache(self) -> list[int]:
        return []

    def cache_length(self, cache: list[int]) -> int:
        return len(cache)

    def prefill(self, cache: list[int], ids: Sequence[int]) -> None:
        cache.extend(ids)

    def rollback(self, cache: list[int], length: int) -> None:
        if not 0 <= length <= len(cache):
            raise ValueError(f"cannot roll back a cache of {len(cache)} tokens to {length}")
        del cache[length:]

    def generate(self, cache: list[int], request: GenerationRequest) -> Generator[int, None, None]:
        refuse_constraints(self, request)  # it declares no constrained_margins
        cache.extend(request.prompt_ids)
        state = history_state(cache)
        rng = _rng(request.sampling)
        fed: int | None = None  # the last yielded token, fed only once another one is asked for
        for _ in range(request.max_new_tokens):
            if fed is not None:
                cache.append(fed)
                state = fold(state, [fed])
            dist = logprobs_at(state)
            tok = _pick(dist, request.sampling, rng)
            if tok in self.stop_ids:
                return
            if request.logprobs is not None:
                request.logprobs.append(dist[tok])
            fed = tok
            yield tok

    def generate_packed(self, cache: list[int], request: PackedRequest) -> Generator[list[tuple[int, int]], None, None]:
        """Each row on its own history (cache prefix + prompt), one token per row per step; the cache is not touched."""
        refuse_constraints(self, request)
        rows = request.rows
        self.packed_calls += 1
        for r in rows:
            if not 0 <= r.prefix_length <= len(cache):
                raise ValueError(f"row prefix {r.prefix_length} is outside the cache (length {len(cache)})")
        running = [
            _Row(fold(history_state(cache[: r.prefix_length]), r.prompt_ids), [], _rng(request.sampling)) for r in rows
        ]
        for _ in range(request.max_new_tokens):
            step: list[tuple[int, int]] = []
            for i, row in enumerate(running):
                if not row.running:
                    continue
                if row.tokens:
                    row.state = fold(row.state, row.tokens[-1:])
                dist = logprobs_at(row.state)
                tok = _pick(dist, request.sampling, row.rng)
                if tok in self.stop_ids:
                    row.running = False
                    continue
                row.tokens.append(tok)
                if request.logprobs is not None:
                    request.logprobs[i].append(dist[tok])
                step.append((i, tok))
                if request.done is not None and request.done(i, list(row.tokens)):
                    row.running = False
            if not step:
                return
            yield step

    def score_rows(
        self,
        cache: list[int],
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,
    ) -> list[RowScores]:
        out = []
        for r in rows:
            row = r if isinstance(r, PackedRow) else PackedRow(len(cache), r)
            if not row.prompt_ids or not 0 <= row.prefix_length <= len(cache):
                raise ValueError("a scored row needs prompt tokens and a prefix inside the cache")
            skip = len(row.aside.prompt_ids) if row.aside is not None else 0  # tokens already computed aside
            ids = list(row.prompt_ids)
            state = fold(history_state(cache[: row.prefix_length]), ids[: skip + 1])
            token_logprobs = []
            for t in ids[skip + 1 :]:
                token_logprobs.append(logprob(state, t))
                state = fold(state, [t])
            dist = logprobs_at(state)
            out.append(RowScores(token_logprobs, {t: dist.get(t, -math.inf) for t in next_ids}))
        return out


def teacher_forced(history: Sequence[int], tokens: Sequence[int]) -> list[float]:
    """log P(tokens[j] | history + tokens[:j]) for every j: plain recomputation, for the tests."""
    state, out = history_state(history), []
    for t in tokens:
        out.append(logprob(state, t))
        state = fold(state, [t])
    return out


def plain_generate(backend: FakeBackend, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding from scratch on a fresh cache holding `ids`."""
    return list(backend.generate(backend.new_cache(), GenerationRequest(list(ids), max_new_tokens)))
