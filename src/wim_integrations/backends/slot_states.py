"""llama.cpp: documents kept across questions in files on the server (its slot save / restore actions).

A llama.cpp slot holds one sequence, and WiM reads a document in order: each margin request cuts the slot back to its
segment's end. After a question the slot holds the whole document; the next question's first margin request cuts it
back to the first segment, and without help every later segment is computed again. So, before a request would discard
much of what the slot holds, `SlotKeeper` saves the slot (`POST /slots/{id}?action=save`, a file in the server's
`--slot-save-path`), and before a request that needs more of a saved sequence than the slot still holds, it restores
that file into the slot (`action=restore`): the request then finds its prefix cached. A restore reads the saved keys
and values; computing them again costs far more (a prompt token's forward pass against a copy of its cache entry).

Correctness never depends on the keeper's picture of the slot: the server matches each prompt against the slot token
by token and computes whatever differs. A wrong picture (another client used the slot, the server restarted, a file
was removed) costs time only, and is corrected from what the server reports (saved/restored token counts, the cached
tokens of the next request). A server without `--slot-save-path` refuses the actions (HTTP 501): the keeper turns
itself off at the first refusal of any kind and requests go as before. A server that cannot be reached or does not
answer in time raises as any request would.

Several slots (`ServerBackend(margin_slots=...)`): before a group's margin requests go to other slots, `ensure_saved`
saves the document's slot once; each other slot's first request then restores that file like any other.

Files: at most `max_states` per keeper (one per backend), named `wim-<random>-<n>.bin` and overwritten in turn, so the
directory holds at most `max_states` files of a backend's (each the slot's keys/values: about 23 KB a token on the
embedded SmolLM2-135M). The server has no delete action: the files stay after the backend is closed."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ServerResponseError

# A restore pays when it spares at least this many prompt tokens, and at least this share of the tokens it moves:
# computing a prompt token costs far more than reading its saved keys/values (on the embedded model on 2 CPU cores,
# see docs/serving.md), and each action is one HTTP round trip.
MIN_TOKENS = 32
MIN_SHARE = 1 / 64
# The slot is saved before a request that keeps less than this share of what it holds (llama.cpp's own host-memory
# prompt cache uses the same rule): a document given up for another one, or for a second question's first segment.
# Not before each margin request of a run, which gives up only the previous margin (its prompt and text).
SAVE_BELOW_KEPT = 0.5


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class SavedState:
    name: str  # the file name in the server's --slot-save-path
    tokens: list[int]


@dataclass(frozen=True)
class Prepared:
    """What the keeper expects of the request it prepared: this many prompt tokens found in the slot, thanks to
    `restored` (None: the slot held them already)."""

    expected_cached: int
    restored: SavedState | None


class SlotKeeper:
    """Thread-safe. `post(path, body)` sends one JSON request (raising `ServerResponseError` on a refusal)."""

    def __init__(self, post: Callable[[str, dict[str, Any]], Any], max_states: int = 2) -> None:
        self.post = post
        self.enabled = True
        self.max_states = max_states
        self.held: dict[int, list[int]] = {}  # slot -> the tokens it is believed to hold
        self.saved: list[SavedState] = []  # most recently used last
        self.saves = 0
        self.restores = 0
        self.action_ms = 0.0  # what the server reported the saves and restores took
        self.disabled_because: str | None = None
        self._prefix = f"wim-{secrets.token_hex(4)}"
        self._next_name = 0
        self._lock = threading.Lock()

    def prepare(self, slot: int, prompt: Sequence[int], save: bool = True) -> Prepared:
        """Before `prompt` goes to `slot`: restore a saved sequence that covers more of it than the slot holds, or
        (with `save`) save what the slot holds if the request would discard much of it. One action at most."""
        with self._lock:
            held = self.held.get(slot, [])
            have = common_prefix(held, prompt)
            if not self.enabled:
                return Prepared(have, None)
            best, gain = None, 0
            for state in self.saved:
                g = common_prefix(state.tokens, prompt) - have
                if g > gain:
                    best, gain = state, g
            if best is not None and _pays(gain, len(best.tokens)):
                if self._restore(slot, best):
                    return Prepared(have + gain, best)
                return Prepared(0, None)  # the slot is empty after a failed restore
            lost = len(held) - have
            known = any(common_prefix(s.tokens, held) >= len(held) - MIN_TOKENS for s in self.saved)
            if save and lost >= MIN_TOKENS and have < SAVE_BELOW_KEPT * len(held) and not known:
                self._save(slot, held)
            return Prepared(have, None)

    def ensure_saved(self, slot: int, tokens: Sequence[int]) -> bool:
        """Make sure a file holds `tokens` (the document read so far), so other slots can be given it: true if one
        does, or the slot holds them and was saved now. Margin rows spread over several slots restore it there."""
        with self._lock:
            if not self.enabled:
                return False
            state = self._covering(tokens)
            if state is not None:
                self.saved.remove(state)
                self.saved.append(state)  # most recently used: the next save must not overwrite it
                return True
            held = self.held.get(slot, [])
            if common_prefix(held, tokens) < len(tokens):
                return False  # the slot does not hold them (as far as the keeper knows): nothing to save
            self._save(slot, held)
            return self._covering(tokens) is not None  # not if the save was refused or the slot held something else

    def held_prefix(self, slot: int, tokens: Sequence[int]) -> int:
        """How many of `tokens`' first tokens `slot` is believed to hold."""
        with self._lock:
            return common_prefix(self.held.get(slot, []), tokens)

    def sent(self, slot: int, tokens: Sequence[int], prepared: Prepared, cached: int | None) -> None:
        """After a request: `slot` holds `tokens` (its prompt and what was generated), and the server reported
        `cached` prompt tokens found in the slot. Far fewer than expected: the restored file did not hold what the
        keeper thought (replaced, removed), so it is forgotten."""
        with self._lock:
            self.held[slot] = list(tokens)
            if cached is not None and prepared.restored is not None and cached + MIN_TOKENS < prepared.expected_cached:
                self._forget(prepared.restored)

    def forget_slots(self) -> None:
        """The slots' contents are unknown (emptied from outside): the next request decides from nothing."""
        with self._lock:
            self.held.clear()

    def forget_saved(self) -> None:
        """Restore none of the files saved so far (a benchmark's cold run). They stay on the server; the next saves
        overwrite them, name by name."""
        with self._lock:
            self.saved.clear()
            self._next_name = 0

    # -- actions (under the lock) ---------------------------------------------------------------------------------
    def _save(self, slot: int, held: list[int]) -> None:
        if len(self.saved) >= self.max_states:
            name = self.saved.pop(0).name  # the least recently used file is overwritten
        else:
            name = f"{self._prefix}-{self._next_name}.bin"
            self._next_name += 1
        reply = self._action(slot, "save", name)
        if reply is None:
            return
        self.action_ms += float((reply.get("timings") or {}).get("save_ms") or 0.0)
        n = int(reply.get("n_saved", -1))
        if not len(held) - MIN_TOKENS <= n <= len(held) + MIN_TOKENS:  # the slot did not hold what we thought
            return
        self.saved.append(SavedState(name, held[: min(n, len(held))]))
        self.saves += 1

    def _restore(self, slot: int, state: SavedState) -> bool:
        reply = self._action(slot, "restore", state.name)
        if reply is None or int(reply.get("n_restored", -1)) < len(state.tokens):
            self._forget(state)
            self.held[slot] = []  # a failed restore leaves the slot empty
            return False
        self.action_ms += float((reply.get("timings") or {}).get("restore_ms") or 0.0)
        self.saved.remove(state)
        self.saved.append(state)  # most recently used
        self.held[slot] = list(state.tokens)
        self.restores += 1
        return True

    def _action(self, slot: int, action: str, name: str) -> dict[str, Any] | None:
        try:
            reply = self.post(f"/slots/{slot}?action={action}", {"filename": name})
        except ServerResponseError as e:  # no --slot-save-path (HTTP 501), no such endpoint, a reply of another shape
            self.enabled = False  # off for good: the requests go as without the keeper
            self.disabled_because = str(e)[:300]
            return None
        return reply if isinstance(reply, dict) else None

    def _covering(self, tokens: Sequence[int]) -> SavedState | None:
        return next((s for s in self.saved if common_prefix(s.tokens, tokens) >= len(tokens)), None)

    def _forget(self, state: SavedState) -> None:
        if state in self.saved:
            self.saved.remove(state)


def _pays(tokens: int, moved: int) -> bool:
    return tokens >= MIN_TOKENS and tokens >= MIN_SHARE * moved
