"""Log-probabilities and sampling over numpy logits, for backends without torch (llama.cpp): the arithmetic of
transformers' logits processors, so a seeded or greedy run means the same on either path."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

from ..config import SamplingConfig
from .base import RowScores


def cumsum(values: Any) -> Generator[int, None, None]:
    total = 0
    for v in values:
        total += v
        yield total


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logprob(logits: np.ndarray, token: int) -> float:
    """log P(token) under the model's own distribution, before any sampling processor."""
    return float(_log_softmax(logits)[token])


def logprobs_at(logits: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """log P of `ids` under one row of logits (vocab,), by `_log_softmax`'s arithmetic."""
    return _log_softmax(logits)[np.asarray(ids, dtype=np.intp)]


def row_picks(row: Sequence[int], next_ids: Sequence[int]) -> list[list[int]]:
    """What `logits[j]` of a scored row is read for: the row's next token, and for its last position `next_ids`."""
    return [[row[j + 1]] for j in range(len(row) - 1)] + [list(next_ids)]


def row_scores(picked: Sequence[np.ndarray], next_ids: Sequence[int]) -> RowScores:
    """A scored row from `logprobs_at` of each position, in `row_picks`' order."""
    return RowScores(
        [float(p[0]) for p in picked[:-1]], {int(t): float(v) for t, v in zip(next_ids, picked[-1], strict=True)}
    )


def masked(logits: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """`logits` (vocab,) with every id outside `allowed` at -inf: sampling then picks among `allowed` only."""
    ids = np.asarray([t for t in allowed if t < logits.shape[-1]], dtype=np.intp)
    out = np.full(logits.shape, -np.inf, dtype=np.float64)
    out[ids] = logits[ids]
    return out


class Sampler:
    """Greedy argmax, or the transformers processors' arithmetic (repetition penalty, temperature, top-k, top-p)
    and a draw, in numpy."""

    def __init__(self, cfg: SamplingConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed) if cfg.do_sample else None

    def next_token(self, history: list[int], logits: np.ndarray) -> int:
        cfg = self.cfg
        scores = logits.astype(np.float64)
        if cfg.repetition_penalty != 1.0 and history:
            seen = np.unique(np.asarray(history))
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * cfg.repetition_penalty, s / cfg.repetition_penalty)
        if self.rng is None:
            return int(np.argmax(scores))
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k and cfg.top_k < scores.size:
            kth = np.partition(scores, -cfg.top_k)[-cfg.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        if cfg.top_p < 1.0:
            order = np.argsort(scores)  # ascending, as transformers' TopPLogitsWarper
            probs = np.exp(scores[order] - scores[order][-1])
            cum = np.cumsum(probs / probs.sum())
            drop = cum <= 1 - cfg.top_p
            drop[-1] = False  # the most likely token always stays
            scores[order[drop]] = -np.inf
        p = np.exp(scores - scores.max())
        return int(self.rng.choice(scores.size, p=p / p.sum()))
