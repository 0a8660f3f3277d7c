"""WiM on a serving engine over HTTP (llama.cpp's server, vLLM, SGLang, or any OpenAI-compatible server).

The "cache" is a client-side token list (`ServerCache`): prefill appends, rollback truncates, and a generation is one
request whose prompt is the token ids `cache[:prefix] + prompt`, so the server's prefix cache does the work the KV
cache does in process. Before a generation the part of the cache the server has not seen yet is sent once on its own
(a warm-up request that only fills the prefix cache), so every margin request finds its whole prefix cached. Prompts
are always token ids from the local copy of the served model's tokenizer, never re-tokenized strings; at start the
backend checks that this tokenizer matches the server's.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import queue
import threading
from array import array
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import SamplingConfig
from ..errors import (
    ContextTooLongError,
    ServerMismatchError,
    ServerResponseError,
    ServerTimeoutError,
    ServerUnavailableError,
    WiMInputError,
)
from .base import Capabilities, GenerationRequest, PackedRequest, PackedRow, RowScores, refuse_constraints
from .http import HTTPClient, check_base_url
from .server_profiles import PROFILES, LlamaCppProfile, Profile, Usage
from .slot_states import Prepared, SlotKeeper
from .tokenizer import HFTokenizer, TokenizerMethods

# Text whose tokens must be the same on both sides: plain words, digits, accents, CJK, an emoji.
_PROBE_TEXT = "WiM checks the tokenizer: 4417 keepers, naïve café, 東京, 🙂."
# Once a completion has all its tokens (a stop id or the budget) the server should end it at once: the rest of the
# stream is read (its usage report, which vLLM sends in a chunk of its own, and its end, so the connection can be
# reused), but at most this many more events; then the stream is closed.
_EVENTS_AFTER_END = 4
# llama.cpp: margin rows go to several slots only when their longest prefix is at least this long (a document), after
# it was saved to a file that each slot restores; rows on a shorter prefix (a judge prompt) stay on their own slot.
_SPREAD_SAVE_MIN = 256
# What a reply of the wrong shape raises inside a profile's parsing (a missing key, a string for a number, ...).
_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError)


@dataclass
class ServerCache:
    """A document as the server should see it: its token ids, and how many of them are known to be in the server's
    prefix cache (a belief: an evicted prefix is computed again by the server, correct but slower)."""

    tokens: list[int] = field(default_factory=list)
    warm: int = 0
    slot: int | None = None  # llama.cpp: the slot this document's requests go to
    key: str | None = None  # the document's key (a hash of its first tokens), fixed at its first request


@dataclass(frozen=True)
class RequestRecord:
    """One request sent: what it was for, its prompt length, how much of it was the cache (the prefix), and what the
    server reported as reused from its prefix cache / computed (None where it does not say)."""

    kind: str  # "warm", "generate", "row", "score"
    prompt_tokens: int
    prefix_tokens: int
    cached_tokens: int | None
    computed_tokens: int | None
    slot: int | None = None  # llama.cpp: the slot it went to


class ServerBackend(TokenizerMethods):
    """The backend protocol over a serving engine. Thread-safe; each WiM run owns its own `ServerCache`."""

    tokens: HFTokenizer

    def __init__(
        self,
        base_url: str,
        *,
        tokenizer: Any,
        model: str | None = None,
        engine: str = "llama.cpp",
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        context_window: int | None = None,
        cache_salt: str | None = None,
        route_header: str | None = None,
        stop_ids: Sequence[int] | None = None,
        reuse_prefix: bool = True,
        save_slots: bool = True,
        margin_slots: int | None = None,
        check: bool = True,
        name: str | None = None,
    ) -> None:
        check_base_url(base_url)  # before the tokenizer is loaded
        if not isinstance(engine, str) or engine not in PROFILES:
            raise WiMInputError(f"engine={engine!r} is not known; use one of {sorted(PROFILES)}.")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise WiMInputError(f"max_concurrency must be a whole number of at least 1, not {max_concurrency!r}.")
        if margin_slots is not None and (
            not isinstance(margin_slots, int) or isinstance(margin_slots, bool) or margin_slots < 1
        ):
            raise WiMInputError(
                f"margin_slots must be None (every slot of the server) or a whole number of at least 1, not "
                f"{margin_slots!r}; 1 decodes a document's margins one after another on its own slot."
            )
        # reuse_prefix=False sends every request cold (no warm-ups; llama.cpp: cache_prompt off): for comparisons.
        self.profile: Profile = PROFILES[engine](model, cache_salt, reuse_prefix)
        # Several replicas behind a router: every request of a document carries this header with the document's key,
        # so a router that routes on it keeps the document on one replica's prefix cache (docs/serving.md).
        self.route_header = _check_header_name(route_header)
        self.engine = engine
        self.tokens = HFTokenizer(_load_tokenizer(tokenizer))
        self.name = name or f"{engine}:{model or base_url}"
        self.lock = threading.RLock()
        self.rollback_limit: int | None = None
        self.max_concurrency = max_concurrency
        api_key = api_key if api_key is not None else os.environ.get("WIM_SERVER_API_KEY")
        self.client = HTTPClient(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            max_connections=max_concurrency + 2,
            what=f"{engine} server",
        )
        ids = set(stop_ids) if stop_ids is not None else _stop_ids(self.tokens)
        if not ids:
            raise WiMInputError("the tokenizer names no end-of-turn token; pass stop_ids=[...] for the served model.")
        self.stop_ids = frozenset(ids)
        self.requests: deque[RequestRecord] = deque(maxlen=100_000)  # newest last; for tests and benchmarks
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="wim-server")
        self.n_slots = 1
        # llama.cpp: how many of the server's slots one document's margins may use at once (None: all of them).
        self.margin_slots = margin_slots
        self.max_context_tokens: int | None = context_window
        # llama.cpp: a document the slot held is saved on the server before a request discards it, and restored when
        # a later request needs it (a second question); see slot_states.py. Off without prefix reuse.
        self.slot_keeper: SlotKeeper | None = None
        if save_slots and reuse_prefix and isinstance(self.profile, LlamaCppProfile):
            self.slot_keeper = SlotKeeper(self.client.post_json)
        if check:
            self.check()

    @property
    def capabilities(self) -> Capabilities:
        caps = self.profile.capabilities
        if isinstance(self.profile, LlamaCppProfile) and self._spread() > 1:
            # Margins on several slots at once: the reader groups segments and sends their rows together.
            return replace(caps, packed_rows=True, concurrent_requests=True)
        return caps

    def _spread(self) -> int:
        """llama.cpp: how many slots a group's margin rows go to. More than one needs slot files (each slot is given
        the document by a restore) and prefix reuse; the pool bounds the requests in flight."""
        if self.slot_keeper is None or not self.slot_keeper.enabled:
            return 1
        return max(1, min(self.n_slots, self.margin_slots or self.n_slots, self.max_concurrency))

    def check(self) -> None:
        """Reach the server, read its context window, and compare its tokenizer with ours (raises on mismatch)."""
        self.client.get_ok(self.profile.health_path)
        if self.max_context_tokens is None:
            try:
                self.max_context_tokens = self.profile.window(self.client)
            except Exception:  # the window is optional information: planning then checks nothing against it
                self.max_context_tokens = None
        if isinstance(self.profile, LlamaCppProfile):
            self.n_slots = self._parsed("/props", self.profile.slots, self.client)
        probe = self.tokens.chat_frame().prefix + _PROBE_TEXT
        request = self.profile.tokenize(probe)
        if request is None:
            return  # the engine has no tokenize endpoint: documented as unchecked
        ours = self.tokens.encode_template(probe)
        theirs = self._parsed(request[0], self.profile.tokens_of, self.client.post_json(*request))
        if theirs != ours:
            same = (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
            at = next(same, min(len(ours), len(theirs)))
            raise ServerMismatchError(
                f"the local tokenizer ({self.tokens.name!r}) does not match the model served at "
                f"{self.client.base_url}: {_PROBE_TEXT!r} (in the chat frame) is {len(ours)} tokens here and "
                f"{len(theirs)} there, first different at token {at} ({ours[at : at + 3]} vs {theirs[at : at + 3]}). "
                "Pass tokenizer= the served model's own tokenizer directory."
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- the cache: a token list -------------------------------------------------------------------------------
    def new_cache(self) -> ServerCache:
        return ServerCache()

    def cache_length(self, cache: ServerCache) -> int:
        return len(cache.tokens)

    def prefill(self, cache: ServerCache, ids: Sequence[int]) -> None:
        cache.tokens.extend(int(t) for t in ids)  # sent with the next request that needs it (see `_warm`)

    def rollback(self, cache: ServerCache, length: int) -> None:
        if length > len(cache.tokens):
            raise ValueError(f"cannot roll a cache of {len(cache.tokens)} tokens forward to {length}")
        del cache.tokens[length:]
        cache.warm = min(cache.warm, length)

    # -- generation --------------------------------------------------------------------------------------------
    def generate(self, cache: ServerCache, request: GenerationRequest) -> Generator[int, None, None]:
        # No engine profile sends a per-request constraint (docs/architecture.md, "Quoted margins").
        refuse_constraints(self, request)
        if not request.prompt_ids:
            raise ValueError("generation needs at least one prompt token")
        self._warm(cache, len(cache.tokens))
        prefix = len(cache.tokens)
        prompt = [*cache.tokens, *request.prompt_ids]
        self._check_fits(len(prompt) + request.max_new_tokens)
        out: list[int] = []
        cancel = threading.Event()
        # Asked for only where the engine reports them (the plain OpenAI profile does not: its list stays empty).
        want_logprobs = request.logprobs is not None and self.capabilities.generation_logprobs
        try:
            for token, logprob in self._stream(
                "generate",
                prompt,
                prefix,
                request.max_new_tokens,
                request.sampling,
                want_logprobs,
                self._slot(cache),
                cancel,
                self._headers(cache),
            ):
                out.append(token)
                if want_logprobs and request.logprobs is not None:
                    request.logprobs.append(_required(logprob, self.engine))
                yield token
        finally:
            cancel.set()
        # As in process: the prompt and every output token but the last are now in the (server's) cache.
        cache.tokens.extend(request.prompt_ids)
        cache.tokens.extend(out[:-1])
        cache.warm = len(cache.tokens)

    def generate_packed(
        self, cache: ServerCache, request: PackedRequest
    ) -> Generator[list[tuple[int, int]], None, None]:
        """Each row is its own streamed request (at most `max_concurrency` at once; the server batches them), sent
        once its prefix is in the server's prefix cache. Grouped: one warm-up request for the longest prefix, then
        every row. With `request.overlap` (engines that batch prefill and decode together): one warm-up per row
        prefix, in order, each row sent as soon as its own prefix is warm, so the engine decodes the first margins
        while it computes the text after them (the paper's overlap, done by the engine's scheduler)."""
        refuse_constraints(self, request)
        rows = request.rows
        if not rows:
            return
        for r in rows:
            if not r.prompt_ids or not 0 <= r.prefix_length <= len(cache.tokens):
                raise ValueError(f"row prefix {r.prefix_length} is outside the cache or its prompt is empty")
        staged = request.overlap and self.capabilities.overlap and self.profile.reuse_prefix
        if not staged:
            self._warm(cache, max(r.prefix_length for r in rows))
        events: queue.Queue[tuple[int, int | None, float | None, BaseException | None]] = queue.Queue()
        cancels = [threading.Event() for _ in rows]
        stopped = threading.Event()  # the consumer left: no more warm-ups or rows
        slot, headers = self._slot(cache), self._headers(cache)
        prompts = [[*cache.tokens[: r.prefix_length], *r.prompt_ids] for r in rows]  # built here, not in the workers
        want_logprobs = request.logprobs is not None and self.capabilities.generation_logprobs
        # llama.cpp: rows in lanes, one lane per slot, each lane's rows one after another (a slot runs one sequence).
        lanes = self._lanes(rows, prompts, slot) if slot is not None and not staged else None

        def run(i: int, slot: int | None = slot, save_slot: bool = True) -> None:
            r, prompt = rows[i], prompts[i]
            try:
                self._check_fits(len(prompt) + request.max_new_tokens)
                for token, lp in self._stream(
                    "row",
                    prompt,
                    r.prefix_length,
                    request.max_new_tokens,
                    request.sampling,
                    want_logprobs,
                    slot,
                    cancels[i],
                    headers,
                    save_slot,
                ):
                    events.put((i, token, lp, None))
            except BaseException as e:  # handed to the consumer, raised there
                events.put((i, None, None, e))
                return
            events.put((i, None, None, None))

        def stages() -> None:
            """Warm each row prefix in turn (a snapshot of the tokens: the consumer owns the cache), then send its
            rows. Runs on a thread of its own; an error is handed to the consumer like a row's."""
            try:
                for upto in sorted({r.prefix_length for r in rows}):
                    if upto > cache.warm and not stopped.is_set():
                        self._send_warm(cache, prompts_upto(upto), slot, headers)
                    if stopped.is_set():
                        return
                    cache.warm = max(cache.warm, upto)
                    for i, r in enumerate(rows):
                        if r.prefix_length == upto:
                            self._pool.submit(run, i)
            except BaseException as e:
                events.put((-1, None, None, e))

        def prompts_upto(upto: int) -> list[int]:
            return next(p[:upto] for p, r in zip(prompts, rows, strict=True) if r.prefix_length >= upto)

        def lane(lane_slot: int, indices: list[int], save_slot: bool) -> None:
            for i in indices:
                if stopped.is_set():
                    return
                run(i, lane_slot, save_slot)

        if staged:
            # Its own thread, not the pool's: rows queued behind it on a full pool must not wait for the warm-ups.
            threading.Thread(target=stages, name="wim-server-stages", daemon=True).start()
        elif lanes is not None:
            for lane_slot, indices, save_slot in lanes:
                self._pool.submit(lane, lane_slot, indices, save_slot)
        else:
            for i in range(len(rows)):
                self._pool.submit(run, i)
        outputs: list[list[int]] = [[] for _ in rows]
        pending: list[deque[tuple[int, float | None] | None]] = [deque() for _ in rows]  # None: the row ended
        running = set(range(len(rows)))

        def end_row(j: int) -> None:
            running.discard(j)
            if request.row_ended is not None:
                request.row_ended(j, list(outputs[j]))

        def absorb(item: tuple[int, int | None, float | None, BaseException | None]) -> None:
            i, token, lp, error = item
            if error is not None:
                raise error
            pending[i].append(None if token is None else (token, lp))

        try:
            while running:
                absorb(events.get())  # wait for the next token (or end) of any row
                while not events.empty():
                    absorb(events.get_nowait())
                while any(pending[j] for j in running):  # one step: at most one token per row
                    step: list[tuple[int, int]] = []
                    for j in sorted(running):
                        if not pending[j]:
                            continue
                        item = pending[j].popleft()
                        if item is None:
                            end_row(j)
                            continue
                        token, lp = item
                        outputs[j].append(token)
                        if want_logprobs and request.logprobs is not None:
                            request.logprobs[j].append(_required(lp, self.engine))
                        step.append((j, token))
                        if request.done is not None and request.done(j, outputs[j]):
                            cancels[j].set()
                            end_row(j)
                    if step:
                        yield step
        finally:
            stopped.set()
            for c in cancels:
                c.set()

    def score_rows(
        self,
        cache: ServerCache,
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,
    ) -> list[RowScores]:
        """Teacher-forced log-probabilities from the server's prompt log-probabilities: one request per row, and one
        per (row, next id) since a server reports the log P of the tokens it is given, not of any token asked for.
        A request may read its prefix from the server's cache (vLLM: with scripts/vllm_plugin); should that cover a
        position whose log P is needed (a row's last `tails[i]`, default all), it is sent again without the cache."""
        if self.capabilities.scoring == "none":
            raise NotImplementedError(f"the {self.engine} server offers no prompt log-probabilities")
        base = len(cache.tokens)
        if tails is not None and len(tails) != len(rows):
            raise ValueError(f"{len(tails)} tails for {len(rows)} rows")
        prepared = []
        for r in rows:
            prefix, ids = (r.prefix_length, list(r.prompt_ids)) if isinstance(r, PackedRow) else (base, list(r))
            if prefix != base and self.capabilities.scoring != "rows":
                raise ValueError("rows that see only part of the cache are not scored on this server")
            if not ids:
                raise ValueError("a row needs at least one prompt token")
            prepared.append((cache.tokens[:prefix], ids))
        # Each row's prefix is in the server's cache already (a margin request's prefix, or the warm-up before it):
        # no warm-up here. vLLM reads it only with WiM's plugin (scripts/vllm_plugin); without, it computes it again.
        slot, headers = self._slot(cache), self._headers(cache)

        def lp(prompt: list[int], prefix: int, tail: int, needed: int) -> list[float]:
            for read_cache in (True, False):
                path, body = self.profile.score(prompt, slot, read_cache, needed)
                reply = self.client.post_json(path, body, headers)
                self._record("score", prompt, prefix, self._parsed(path, self.profile.usage, reply), slot)
                values = self._parsed(path, self.profile.prompt_logprobs, reply, prompt, tail)
                if not any(math.isnan(v) for v in values[len(values) - needed :]):
                    return values
            raise ServerResponseError(
                f"the {self.engine} server at {self.client.base_url}{path} sent no log-probability for some prompt "
                "tokens of a scoring request, even when asked not to read its prefix cache"
            )

        jobs = []  # per row: log P of its tokens after the first; then per next id, its log P after the row
        for i, (head, ids) in enumerate(prepared):
            needed = len(ids) - 1 if tails is None else min(tails[i], len(ids) - 1)
            jobs.append(self._pool.submit(lp, [*head, *ids], len(head), len(ids) - 1, needed))
            jobs += [self._pool.submit(lp, [*head, *ids, int(t)], len(head), 1, 1) for t in next_ids]
        results = [j.result() for j in jobs]
        per_row = 1 + len(next_ids)
        return [
            RowScores(results[k], {int(t): results[k + 1 + n][-1] for n, t in enumerate(next_ids)})
            for k in range(0, len(results), per_row)
        ]

    # -- internals ---------------------------------------------------------------------------------------------
    def _lanes(
        self, rows: Sequence[PackedRow], prompts: Sequence[Sequence[int]], slot: int
    ) -> list[tuple[int, list[int], bool]]:
        """llama.cpp: (slot, row indices, whether a request there may save the slot) per lane. A slot holds one
        sequence, so rows go longest prefix first (each later one cuts the slot back; nothing is computed again).
        With several slots (`margin_slots`) and a document's prefix, the document is saved to a file first; the
        longest row alone stays on the document's slot (which so still holds the whole document for the answer), the
        others go round the next slots, which restore the file once each (and on a second question find their rows'
        own prefixes, the margin instruction's shared start included, where the first question left them: a lane
        sends that row first, `held_first`). Those requests never save (the file holds what matters); otherwise the
        slot keeper's rule applies."""
        order = sorted(range(len(rows)), key=lambda i: -rows[i].prefix_length)
        spread = min(self._spread(), len(rows))
        longest = rows[order[0]].prefix_length
        keeper = self.slot_keeper  # not None where spread > 1 (`_spread`)
        if (
            keeper is not None
            and spread > 1
            and longest >= _SPREAD_SAVE_MIN
            and keeper.ensure_saved(slot, prompts[order[0]][:longest])
        ):
            others = [(slot + k) % self.n_slots for k in range(1, spread)]
            lanes = [(s, order[1 + k :: len(others)]) for k, s in enumerate(others)]
            return [(slot, order[:1], False)] + [(s, held_first(keeper, s, ix, prompts), False) for s, ix in lanes]
        return [(slot, order, True)]

    def _warm(self, cache: ServerCache, upto: int) -> None:
        """Put `cache.tokens[:upto]` into the server's prefix cache with one request, unless it is there already."""
        if upto <= cache.warm or upto == 0 or not self.profile.reuse_prefix:
            return
        self._send_warm(cache, cache.tokens[:upto], self._slot(cache), self._headers(cache))
        cache.warm = upto

    def _send_warm(
        self, cache: ServerCache, prompt: list[int], slot: int | None, headers: dict[str, str] | None
    ) -> None:
        self._check_fits(len(prompt) + 1)
        prepared = self._prepare_slot(slot, prompt)
        path, body = self.profile.warm(prompt, slot)
        reply = self.client.post_json(path, body, headers)
        usage = self._parsed(path, self.profile.usage, reply)
        self._record("warm", prompt, cache.warm, usage, slot)
        self._slot_sent(slot, prompt, prepared, usage)

    def _stream(
        self,
        kind: str,
        prompt: list[int],
        prefix: int,
        max_tokens: int,
        sampling: SamplingConfig,
        want_logprobs: bool,
        slot: int | None,
        cancel: threading.Event,
        headers: dict[str, str] | None = None,
        save_slot: bool = True,
    ) -> Generator[tuple[int, float | None], None, None]:
        """(token, log P) of one streamed completion, up to a stop id (not yielded) or the budget.

        Bounded: once the completion has all its tokens, at most `_EVENTS_AFTER_END` more events are read (for the
        usage report) and the stream is closed, so a server that streams on past the budget cannot hold the run."""
        path, body = self.profile.generate(prompt, max_tokens, sampling, sorted(self.stop_ids), want_logprobs, slot)
        n, usage, finished, final, after = 0, None, False, False, 0
        prepared = self._prepare_slot(slot, prompt, save_slot)
        generated: list[int] = []
        events = self.client.stream_events(path, body, cancel, headers)
        try:
            for event in events:
                usage = self._parsed(path, self.profile.usage, event) or usage
                final = final or self._parsed(path, self.profile.is_final, event)
                if finished:  # all tokens are in: read on to the end (usage report, [DONE]), a few events at most
                    after += 1
                    if after >= _EVENTS_AFTER_END:
                        break
                    continue
                tokens = self._parsed(path, self.profile.chunk_tokens, event, self.tokens.encode_text)
                for token, logprob in tokens[n:] if self.profile.cumulative else tokens:
                    if token in self.stop_ids:
                        finished = True
                        break
                    n += 1
                    generated.append(token)
                    yield token, logprob
                    if n >= max_tokens:
                        finished = True
                        break
        except ServerTimeoutError:
            if not finished:
                raise  # with every token in, a server slow to end the stream costs only its usage report
        except GeneratorExit:  # closed by the caller (a margin complete by its stop rule): recorded as far as it went
            self._record(kind, prompt, prefix, usage, slot)
            self._slot_sent(slot, [*prompt, *generated], prepared, usage)
            raise
        finally:
            events.close()  # closes the connection: the server stops generating for it
        if not (final or finished or cancel.is_set()):
            raise ServerUnavailableError(
                f"the {self.engine} server's stream ended after {n} tokens without its final event (connection cut "
                "off?); the run was stopped, nothing partial was kept. Check the server's log."
            )
        self._record(kind, prompt, prefix, usage, slot)
        self._slot_sent(slot, [*prompt, *generated], prepared, usage)

    def _parsed(self, path: str, read: Callable[..., Any], *args: Any) -> Any:
        """`read(*args)`: a profile reading a reply; a reply of the wrong shape is a `ServerResponseError`."""
        try:
            return read(*args)
        except _SHAPE_ERRORS as e:
            raise ServerResponseError(
                f"the {self.engine} server at {self.client.base_url}{path} sent a reply WiM cannot read "
                f"({type(e).__name__}: {str(e)[:200]}); is engine={self.engine!r} the engine serving there?"
            ) from e

    def _record(
        self, kind: str, prompt: Sequence[int], prefix: int, usage: Usage | None, slot: int | None = None
    ) -> None:
        u = usage or Usage()
        self.requests.append(RequestRecord(kind, len(prompt), prefix, u.cached, u.computed, slot))

    def _prepare_slot(self, slot: int | None, prompt: Sequence[int], save: bool = True) -> Prepared | None:
        """llama.cpp: before `prompt` goes to `slot`, restore a saved document it needs or (with `save`) save one it
        discards."""
        if self.slot_keeper is None or slot is None:
            return None
        return self.slot_keeper.prepare(slot, prompt, save)

    def _slot_sent(
        self, slot: int | None, tokens: Sequence[int], prepared: Prepared | None, usage: Usage | None
    ) -> None:
        if self.slot_keeper is not None and slot is not None and prepared is not None:
            self.slot_keeper.sent(slot, tokens, prepared, usage.cached if usage is not None else None)

    def _slot(self, cache: ServerCache) -> int | None:
        """llama.cpp: the document's slot, fixed by its first tokens, so a second question lands where the first
        left the document (others: None)."""
        if not isinstance(self.profile, LlamaCppProfile):
            return None
        if cache.slot is None:
            cache.slot = int(_document_key(cache)[:8], 16) % max(1, self.n_slots)
        return cache.slot

    def _headers(self, cache: ServerCache) -> dict[str, str] | None:
        """With `route_header`: that header with the document's key, on every request of the document."""
        return None if self.route_header is None else {self.route_header: _document_key(cache)}

    def _check_fits(self, n_tokens: int) -> None:
        if self.max_context_tokens and n_tokens > self.max_context_tokens:
            raise ContextTooLongError(
                f"a request of up to {n_tokens} tokens does not fit the served window of {self.max_context_tokens} "
                f"({self.name}); start the server with a larger context (llama.cpp: -c, vLLM: --max-model-len) or "
                "shorten the input."
            )


def server_options_known() -> set[str]:
    """The keyword options `ServerBackend` takes (what `WiM.from_server` may pass on)."""
    params = inspect.signature(ServerBackend.__init__).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _document_key(cache: ServerCache) -> str:
    """A hash of the document's first 1024 tokens (the chat prefix and its start), taken at its first request and
    kept: every later request of the run, and of another run that reads the same document the same way, has the same
    key, whatever the cache holds by then."""
    if cache.key is None:
        cache.key = hashlib.sha256(array("q", cache.tokens[:1024]).tobytes()).hexdigest()[:32]
    return cache.key


# Headers the backend sets itself (or HTTP does): a routing key must not replace them.
_RESERVED_HEADERS = frozenset({"authorization", "content-type", "content-length", "host", "transfer-encoding"})
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _check_header_name(name: object) -> str | None:
    """`route_header` if it is None or a header name HTTP allows and the backend does not set itself."""
    if name is None:
        return None
    if not isinstance(name, str) or not name or not set(name) <= _HEADER_CHARS:
        raise WiMInputError(
            f"route_header={name!r} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only), e.g. "
            "'x-session-id' for vllm-router's consistent_hash policy."
        )
    if name.lower() in _RESERVED_HEADERS:
        raise WiMInputError(f"route_header={name!r} is a header the backend sets itself; name another one.")
    return name


def _required(logprob: float | None, engine: str) -> float:
    if logprob is None:
        from ..errors import ServerResponseError

        raise ServerResponseError(f"the {engine} server sent a token without the log-probability that was asked for")
    return logprob


def _load_tokenizer(tokenizer: Any) -> Any:
    if not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from ..extras import require

    require("server")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.fspath(tokenizer), local_files_only=True)
    except OSError as e:
        from ..errors import ModelLoadError

        raise ModelLoadError(
            f"could not load the tokenizer {os.fspath(tokenizer)!r} ({e}); pass the served model's local directory "
            "(with tokenizer.json), or a loaded tokenizer."
        ) from e


def _stop_ids(tokens: HFTokenizer) -> set[int]:
    """End-of-turn ids: the tokenizer's eos plus its generation_config's where the tokenizer's directory has one."""
    ids = set(tokens.eos_ids)
    path = getattr(tokens.tokenizer, "name_or_path", "")
    if path and os.path.isdir(path):
        try:
            from transformers import GenerationConfig

            eos = GenerationConfig.from_pretrained(path, local_files_only=True).eos_token_id
        except OSError:
            eos = None
        if eos is not None:
            ids |= {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}
    return ids


def held_first(keeper: SlotKeeper, slot: int, indices: list[int], prompts: Sequence[Sequence[int]]) -> list[int]:
    """A lane's rows with the one whose prompt `slot` already holds most of first (on a second question: the row the
    slot ran last, its prefix and the margin instruction's shared start still there); the rest keep their order
    (longest prefix first: the first of them restores the document's file, each later one cuts the slot back)."""
    if len(indices) < 2:
        return indices
    held = [keeper.held_prefix(slot, prompts[i]) for i in indices]
    best = held.index(max(held))  # the first on ties: longest first where the slot holds none of them (a first read)
    return [indices[best], *indices[:best], *indices[best + 1 :]]
