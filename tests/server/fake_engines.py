"""Fake vLLM and SGLang servers for the serving-backend tests, and an in-process reference on the same model.

No GPU here, so the vLLM and SGLang profiles are checked against these: small threaded HTTP servers that speak each
engine's wire format (as documented, and as read in their sources; see each class) in front of the deterministic
model of tests/core/fake_backend.py, run on a Hugging Face tokenizer's ids (`TinyModel`). They keep a prefix cache
(cached tokens are reported as the engines report them), log every request body, and count the generation requests
in flight at once. `ReferenceBackend` runs the same model in process, so a WiM run over HTTP can be compared with `==`.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.core.fake_backend import STOP_ID, VOCAB, FakeBackend, _pick, fold, history_state, logprobs_at
from wim_integrations.backends.base import Capabilities, GenerationRequest, PackedRequest, PackedRow, RowScores
from wim_integrations.backends.tokenizer import HFTokenizer, TokenizerMethods
from wim_integrations.config import SamplingConfig

FLAG = "wim_read_prefix_cache"  # vllm_xargs key of scripts/vllm_plugin
UPTO = "wim_read_prefix_cache_upto"  # and its cap: read at most this many tokens from the cache

# Real models give every token a finite log P; the toy model gives the ids it never writes -inf, which JSON cannot
# carry. vLLM clamps -inf prompt log-probabilities to this value; the fakes do so for both engines.
LOGPROB_FLOOR = -9999.0


class TinyModel:
    """fake_backend's model on another tokenizer's ids.

    A permutation `P` of token ids sends the tokenizer's end-of-turn id onto fake_backend's STOP_ID and the
    tokenizer's one-character ids of "aeiou rstlnBCDM0123.," onto the fake ids of those characters (the rest of
    fake_backend's VOCAB); the model of a history `ids` is fake_backend's model of `P(ids)`, and what it writes is
    mapped back with `P^-1`. So it writes only text the tokenizer encodes one character per token, and it stops at
    the tokenizer's eos."""

    def __init__(self, tokenizer: Any) -> None:
        chars = FakeBackend()
        ids: list[int] = []
        for v in VOCAB:
            if v == STOP_ID:
                ids.append(int(tokenizer.eos_token_id))
                continue
            encoded = tokenizer.encode(chars.decode([v]), add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(f"{chars.decode([v])!r} is not one token of this tokenizer: {encoded}")
            ids.append(int(encoded[0]))
        if len(set(ids)) != len(ids):
            raise ValueError(f"the model's token ids are not distinct: {ids}")
        forward = dict(zip(ids, VOCAB, strict=True))
        # Close the map into a permutation: fake ids that are no tokenizer candidate take the candidates' free ids.
        vocab = set(VOCAB)
        forward.update(
            zip(sorted(v for v in VOCAB if v not in forward), sorted(t for t in ids if t not in vocab), strict=True)
        )
        self._to = forward
        self._from = {b: a for a, b in forward.items()}
        assert len(self._from) == len(self._to)
        self.vocab = tuple(ids)  # what the model can write, in fake_backend's VOCAB order
        self.stop_id = ids[0]

    def to_model(self, ids: Sequence[int]) -> list[int]:
        return [self._to.get(int(t), int(t)) for t in ids]

    def from_model(self, token: int) -> int:
        return self._from.get(token, token)

    def complete(
        self, prompt: Sequence[int], max_tokens: int, sampling: SamplingConfig, stop_ids: set[int]
    ) -> list[tuple[int, float]]:
        """(token, log P) of a completion of `prompt`, as a server reports it: up to and including a stop id, or
        `max_tokens` tokens. Sampling as fake_backend's: one seeded generator per completion."""
        state = history_state(self.to_model(prompt))
        rng = random.Random(sampling.seed) if sampling.do_sample else None
        out: list[tuple[int, float]] = []
        while len(out) < max_tokens:
            dist = logprobs_at(state)
            tok = _pick(dist, sampling, rng)
            out.append((self.from_model(tok), dist[tok]))
            if out[-1][0] in stop_ids:
                break
            state = fold(state, [tok])
        return out

    def prompt_logprobs(self, prompt: Sequence[int]) -> list[tuple[float, int] | None]:
        """(log P, rank) of every prompt token given the ones before it (None for the first), the log P floored at
        `LOGPROB_FLOOR`."""
        ids = self.to_model(prompt)
        out: list[tuple[float, int] | None] = [None]
        state = history_state(ids[:1])
        for t in ids[1:]:
            dist = logprobs_at(state)
            lp = dist.get(t, -math.inf)
            out.append((max(lp, LOGPROB_FLOOR), 1 + sum(1 for x in dist.values() if x > lp)))
            state = fold(state, [t])
        return out


class ReferenceBackend(TokenizerMethods):
    """The in-process reference: fake_backend's `FakeBackend` behind `TinyModel`'s relabelling of ids, with the
    tokenizer side of the Hugging Face tokenizer (as `ServerBackend` has it) and the capabilities it is given (those of
    the engine it stands for)."""

    def __init__(self, tokenizer: Any, capabilities: Capabilities, *, max_context_tokens: int | None = None) -> None:
        self.model = TinyModel(tokenizer)
        self.inner = FakeBackend(capabilities, name="reference", max_context_tokens=max_context_tokens)
        self.tokens = HFTokenizer(tokenizer)
        self.name = "reference"
        self.lock = threading.RLock()
        self.max_context_tokens = max_context_tokens
        self.rollback_limit: int | None = None
        self.stop_ids = frozenset({self.model.stop_id})
        self.capabilities = capabilities

    def new_cache(self) -> list[int]:
        return self.inner.new_cache()

    def cache_length(self, cache: list[int]) -> int:
        return len(cache)

    def prefill(self, cache: list[int], ids: Sequence[int]) -> None:
        self.inner.prefill(cache, self.model.to_model(ids))

    def rollback(self, cache: list[int], length: int) -> None:
        self.inner.rollback(cache, length)

    def generate(self, cache: list[int], request: GenerationRequest) -> Generator[int, None, None]:
        inner = replace(request, prompt_ids=self.model.to_model(request.prompt_ids))
        for tok in self.inner.generate(cache, inner):
            yield self.model.from_model(tok)

    def generate_packed(self, cache: list[int], request: PackedRequest) -> Generator[list[tuple[int, int]], None, None]:
        m, done = self.model, request.done
        inner_rows = [PackedRow(r.prefix_length, m.to_model(r.prompt_ids)) for r in request.rows]
        inner_done = None if done is None else (lambda i, toks: done(i, [m.from_model(t) for t in toks]))
        steps = self.inner.generate_packed(cache, replace(request, rows=inner_rows, done=inner_done))
        for step in steps:
            yield [(i, m.from_model(t)) for i, t in step]

    def score_rows(
        self,
        cache: list[int],
        rows: Sequence[Sequence[int] | PackedRow],
        next_ids: Sequence[int] = (),
        tails: Sequence[int] | None = None,
    ) -> list[RowScores]:
        m = self.model
        inner_rows = [
            PackedRow(r.prefix_length, m.to_model(r.prompt_ids)) if isinstance(r, PackedRow) else m.to_model(r)
            for r in rows
        ]
        scores = self.inner.score_rows(cache, inner_rows, m.to_model(next_ids))
        return [RowScores(s.token_logprobs, {m.from_model(t): lp for t, lp in s.next_logprobs.items()}) for s in scores]


class Refused(Exception):
    """A request the engine answers with HTTP 400."""


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # slices compare in C: a binary search beats a Python loop over thousands of tokens
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _sampling(temperature: float | None, top_p: float | None, top_k: int | None, seed: int | None) -> SamplingConfig:
    """The engines' sampling fields as fake_backend's sampling: temperature 0 is greedy; top_k -1 or 0 is off."""
    t = 1.0 if temperature is None else float(temperature)
    if t < 1e-6:
        return SamplingConfig()
    k = int(top_k) if top_k is not None and int(top_k) > 0 else 0
    return SamplingConfig(do_sample=True, temperature=t, top_p=1.0 if top_p is None else top_p, top_k=k, seed=seed)


# One reply: a JSON body with its status, an empty body, or a server-sent event stream of JSON objects.
Reply = tuple[int, Any] | Iterator[dict[str, Any]]
EMPTY = object()


class FakeEngine:
    """What both fake servers share: a `ThreadingHTTPServer` on 127.0.0.1 (a free port; `url`), the log of POST bodies
    (`requests`), request fields the real engine would not know (`unknown`), the prefix cache (`cached_tokens`) and
    the most generation requests in flight at once (`max_in_flight`). Use as a context manager.

    `token_delay` seconds pass after each streamed event (so concurrent streams overlap); `block_size` rounds cached
    tokens down to whole KV-cache blocks (vLLM: 16 tokens; SGLang's radix cache: 1); `tokenize` replaces the engine's
    tokenizer (to serve "another model"). `before_event(body, n)`, when set, is called before a stream's n-th event
    (from 0) is sent, on the request's thread: a test holds a stream there to fix the order streams interleave."""

    kind = ""
    generation_paths: tuple[str, ...] = ()

    def __init__(
        self,
        tokenizer: Any,
        *,
        context_window: int = 8192,
        token_delay: float = 0.0,
        block_size: int = 1,
        tokenize: Callable[[str], list[int]] | None = None,
        model_name: str = "tiny-model",
    ) -> None:
        self.tokenizer = tokenizer
        self.model = TinyModel(tokenizer)
        self.context_window = context_window
        self.token_delay = token_delay
        self.block_size = block_size
        self.model_name = model_name
        self._tokenize = tokenize or (lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[tuple[str, dict[str, str]]] = []  # (path, lower-cased headers) of every POST, in order
        self.unknown: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.before_event: Callable[[dict[str, Any], int], None] | None = None
        self._prompts: list[tuple[str | None, tuple[int, ...]]] = []
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a stream's body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                engine._serve(self, "GET")

            def do_POST(self) -> None:
                engine._serve(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what the tests read -------------------------------------------------------------------------------
    def bodies(self, path: str) -> list[dict[str, Any]]:
        """The bodies POSTed to `path`, in order."""
        with self._lock:
            return [body for p, body in self.requests if p == path]

    def header_values(self, name: str) -> list[str | None]:
        """The value of header `name` on every POST, in order (None where it was not sent)."""
        with self._lock:
            return [headers.get(name.lower()) for _, headers in self.headers]

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self.max_in_flight = self.in_flight

    def cached_tokens(self, prompt: Sequence[int], *, salt: str | None = None, limit: int | None = None) -> int:
        """Tokens of `prompt` found in the prefix cache: its longest common prefix with an earlier prompt (of the same
        cache salt), never the whole prompt (its last token is always computed), in whole blocks, at most `limit`.
        The prompt is in the cache from now on."""
        p = tuple(int(t) for t in prompt)
        with self._lock:
            best = max((_common_prefix(p, q) for s, q in self._prompts if s == salt), default=0)
            self._prompts.append((salt, p))
        best = min(best, len(p) - 1, len(p) if limit is None else limit)
        return max(0, best // self.block_size * self.block_size)

    # -- the HTTP layer ------------------------------------------------------------------------------------
    def route(self, method: str, path: str) -> Callable[[Any], Reply] | None:
        raise NotImplementedError

    def error_body(self, message: str) -> dict[str, Any]:
        return {"error": {"message": message}}

    def check_fields(self, body: dict[str, Any], known: frozenset[str], where: str) -> None:
        with self._lock:
            self.unknown.extend(f"{where}.{k}" for k in body if k not in known)

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        body: Any = None
        if method == "POST":
            raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                self._send_json(h, 400, self.error_body("the body is not JSON"))
                return
            with self._lock:
                self.requests.append((path, body))
                self.headers.append((path, {k.lower(): v for k, v in h.headers.items()}))
        handler = self.route(method, path)
        if handler is None:
            self._send_json(h, 404, {"detail": "Not Found"})
            return
        counted = method == "POST" and path in self.generation_paths
        if counted:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
        pending = [counted]  # whether this request still counts as in flight

        def finished() -> None:  # before the reply's last bytes: the client may send its next request right after
            if pending[0]:
                pending[0] = False
                with self._lock:
                    self.in_flight -= 1

        try:
            try:
                reply = handler(body)
            except Refused as e:
                finished()
                self._send_json(h, 400, self.error_body(str(e)))
                return
            except Exception as e:  # a bug in the fake: said, not a dropped connection
                finished()
                self._send_json(h, 500, self.error_body(f"fake engine error: {type(e).__name__}: {e}"))
                return
            if isinstance(reply, tuple):
                finished()
                self._send_json(h, *reply)
            else:
                self._send_events(h, body, reply, finished)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading (a cancelled stream)
            return
        finally:
            finished()

    def _send_json(self, h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        data = b"" if obj is EMPTY else json.dumps(obj, allow_nan=False).encode()
        h.send_response(status)
        if obj is not EMPTY:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _send_events(
        self,
        h: BaseHTTPRequestHandler,
        body: dict[str, Any],
        events: Iterator[dict[str, Any]],
        finished: Callable[[], None],
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        for n, event in enumerate(events):
            if self.before_event is not None:
                self.before_event(body, n)
            h.wfile.write(b"data: " + json.dumps(event, allow_nan=False).encode() + b"\n\n")
            h.wfile.flush()
            if self.token_delay:
                time.sleep(self.token_delay)
        finished()
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token], skip_special_tokens=True))


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Fields of vLLM's CompletionRequest (vllm/entrypoints/openai/protocol.py): an unknown one is ignored with a warning.
VLLM_COMPLETION_FIELDS = _names(
    "model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed stop "
    "stream stream_options suffix temperature top_p user use_beam_search top_k min_p repetition_penalty "
    "length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens skip_special_tokens "
    "spaces_between_special_tokens truncate_prompt_tokens allowed_token_ids prompt_logprobs add_special_tokens "
    "response_format priority request_id logits_processors return_tokens_as_token_ids return_token_ids "
    "cache_salt kv_transfer_params vllm_xargs"
)


class FakeVLLM(FakeEngine):
    """vLLM's OpenAI-compatible server (`vllm serve --enable-prompt-tokens-details`).

    - GET `/health`: 200 with an empty body. GET `/v1/models`: the model list, each entry with `max_model_len`.
    - POST `/tokenize` {prompt, add_special_tokens}: {count, max_model_len, tokens, token_strs}.
    - POST `/v1/completions` with a token-id `prompt`: `stream` gives `data: {...}` chunks, one per token, and
      `data: [DONE]`; `return_token_ids` puts the chunk's ids in `choices[0].token_ids` (and the prompt's in the first
      chunk's `prompt_token_ids`); `logprobs` gives `choices[0].logprobs` {tokens, token_logprobs, top_logprobs,
      text_offset} (tokens as "token_id:<id>" with `return_tokens_as_token_ids`); the last token's chunk has
      `finish_reason` ("stop" at the eos or a `stop_token_ids` id, which is in `token_ids` but not in the text, or
      "length") and `stop_reason` (the matched stop id; None for the eos); `stream_options.include_usage` adds a
      final chunk with no choices and `usage` {prompt_tokens, completion_tokens, total_tokens, and
      prompt_tokens_details {cached_tokens} only where some were cached: vLLM leaves it out at 0}.
      `prompt_logprobs: k` (not with `stream`) gives `choices[0].prompt_logprobs`: [None, {"<id>": {logprob, rank,
      decoded_token}}, ...]; such a request does not read the prefix cache (vLLM v1 skips it for them).
      `cache_salt` keeps prefix caches apart. Cached tokens are counted in whole blocks of 16 (vLLM's default).

    `token_ids=False` / `logprobs=False`: a plain OpenAI-compatible server, which knows neither `return_token_ids` nor
    `return_tokens_as_token_ids` / gives no log-probabilities. `tokens_per_chunk`: tokens per streamed chunk (vLLM's
    `--stream-interval`; a busy server's chunks also carry several)."""

    kind = "vllm"
    generation_paths = ("/v1/completions",)

    def __init__(
        self,
        tokenizer: Any,
        *,
        token_ids: bool = True,
        logprobs: bool = True,
        prompt_tokens_details: bool = True,
        tokens_per_chunk: int = 1,
        wim_plugin: bool = False,
        plugin_cap: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(tokenizer, **{"block_size": 16, **options})
        self.wim_plugin = wim_plugin  # scripts/vllm_plugin installed: a scoring request may read the prefix cache
        self.plugin_cap = plugin_cap  # ... at most up to its cap (False: the plugin before the cap existed)
        self.tokens_per_chunk = tokens_per_chunk
        self.token_ids = token_ids
        self.logprobs = logprobs
        self.prompt_tokens_details = prompt_tokens_details

    def route(self, method: str, path: str) -> Callable[[Any], Reply] | None:
        return {
            ("GET", "/health"): lambda _: (200, EMPTY),
            ("GET", "/v1/models"): self.models,
            ("POST", "/tokenize"): self.tokenize,
            ("POST", "/v1/completions"): self.completions,
        }.get((method, path))

    def error_body(self, message: str) -> dict[str, Any]:
        return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}

    def models(self, _: Any) -> Reply:
        entry = {
            "id": self.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.context_window,
            "permission": [],
        }
        return 200, {"object": "list", "data": [entry]}

    def tokenize(self, body: dict[str, Any]) -> Reply:
        if body.get("add_special_tokens", True):
            ids = list(self.tokenizer(body["prompt"], add_special_tokens=True)["input_ids"])
        else:
            ids = self._tokenize(body["prompt"])
        return 200, {"count": len(ids), "max_model_len": self.context_window, "tokens": ids, "token_strs": None}

    def completions(self, body: dict[str, Any]) -> Reply:
        self.check_fields(body, VLLM_COMPLETION_FIELDS, "completions")
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = self._tokenize(prompt)
        if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) for t in prompt):
            raise Refused("prompt must be a string or a non-empty list of token ids")
        max_tokens = int(body.get("max_tokens") or 16)
        if len(prompt) + max_tokens > self.context_window:
            raise Refused(
                f"This model's maximum context length is {self.context_window} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} in the completion)."
            )
        stream = bool(body.get("stream"))
        want_prompt_lps = body.get("prompt_logprobs") is not None
        if stream and want_prompt_lps:
            raise Refused("`prompt_logprobs` are not available when `stream=True`.")
        sampling = _sampling(body.get("temperature"), body.get("top_p"), body.get("top_k"), body.get("seed"))
        stop_ids = {int(t) for t in body.get("stop_token_ids") or []}
        ends = stop_ids | (set() if body.get("ignore_eos") else {self.model.stop_id})
        xargs = body.get("vllm_xargs") or {}
        reads_cache = not want_prompt_lps or (self.wim_plugin and xargs.get(FLAG))
        limit = None if reads_cache else 0
        if reads_cache and want_prompt_lps and self.plugin_cap and isinstance(xargs.get(UPTO), int):
            limit = xargs[UPTO]
        cached = self.cached_tokens(prompt, salt=body.get("cache_salt"), limit=limit)
        out = self.model.complete(prompt, max_tokens, sampling, ends)
        last = out[-1][0]
        finish = "stop" if last in ends else "length"
        stop_reason = last if finish == "stop" and last in stop_ids else None
        with_ids = self.token_ids and bool(body.get("return_token_ids"))
        as_ids = self.token_ids and bool(body.get("return_tokens_as_token_ids"))
        n_logprobs = body.get("logprobs") if self.logprobs else None
        usage: dict[str, Any] = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(out),
            "total_tokens": len(prompt) + len(out),
        }
        if self.prompt_tokens_details and cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def text(token: int) -> str:  # a stop token's text is left out
            return "" if token in ends else self._text(token)

        def logprobs(part: list[tuple[int, float]], offset: int) -> dict[str, Any] | None:
            if n_logprobs is None:
                return None
            keys = [f"token_id:{t}" if as_ids else self._text(t) for t, _ in part]
            offsets, at = [], offset
            for t, _ in part:
                offsets.append(at)
                at += len(text(t))
            return {
                "text_offset": offsets,
                "token_logprobs": [lp for _, lp in part],
                "tokens": keys,
                "top_logprobs": [{k: lp} for k, (_, lp) in zip(keys, part, strict=True)],
            }

        def choice(part: list[tuple[int, float]], offset: int, end: bool) -> dict[str, Any]:
            c: dict[str, Any] = {
                "index": 0,
                "text": "".join(text(t) for t, _ in part),
                "logprobs": logprobs(part, offset),
                "finish_reason": finish if end else None,
                "stop_reason": stop_reason if end else None,
            }
            if with_ids:
                c["token_ids"] = [t for t, _ in part]
            return c

        head = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        if not stream:
            c = choice(out, 0, True)
            if with_ids:
                c["prompt_token_ids"] = list(prompt)
            if want_prompt_lps:
                c["prompt_logprobs"] = [
                    None if e is None else {str(t): {"logprob": e[0], "rank": e[1], "decoded_token": self._text(t)}}
                    for t, e in zip(prompt, self.model.prompt_logprobs(prompt), strict=True)
                ]
                for k in range(1, cached + 1):  # the plugin: positions served from the cache are zeros (token 0)
                    c["prompt_logprobs"][k] = {"0": {"logprob": 0.0, "rank": 0, "decoded_token": self._text(0)}}
            return 200, {**head, "choices": [c], "usage": usage}

        def events() -> Iterator[dict[str, Any]]:
            offset, step = 0, self.tokens_per_chunk
            for k in range(0, len(out), step):
                c = choice(out[k : k + step], offset, k + step >= len(out))
                if with_ids and k == 0:
                    c["prompt_token_ids"] = list(prompt)
                offset += len(c["text"])
                yield {**head, "choices": [c]}
            if (body.get("stream_options") or {}).get("include_usage"):
                yield {**head, "choices": [], "usage": usage}

        return events()


# SGLang's GenerateReqInput fields (python/sglang/srt/managers/io_struct.py): unknown ones are ignored.
SGLANG_GENERATE_FIELDS = _names(
    "text input_ids input_embeds image_data audio_data sampling_params rid return_logprob logprob_start_len "
    "top_logprobs_num token_ids_logprob return_text_in_logprobs stream log_metrics return_hidden_states "
    "modalities lora_path session_params custom_logit_processor bootstrap_host bootstrap_port bootstrap_room"
)
# SGLang's SamplingParams (python/sglang/srt/sampling/sampling_params.py): an unknown one fails the request.
SGLANG_SAMPLING_FIELDS = _names(
    "max_new_tokens stop stop_token_ids stop_regex temperature top_p top_k min_p frequency_penalty "
    "presence_penalty repetition_penalty min_new_tokens n json_schema regex ebnf structural_tag ignore_eos "
    "skip_special_tokens spaces_between_special_tokens no_stop_trim custom_params stream_interval logit_bias "
    "sampling_seed"
)


class FakeSGLang(FakeEngine):
    """SGLang's native server (`python -m sglang.launch_server`, default streaming: each event carries the whole
    output so far).

    - GET `/health`, `/health_generate`: 200 with an empty body. GET `/get_model_info`: {model_path, tokenizer_path,
      is_generation, preferred_sampling_params, weight_version} (no context length: SGLang reports it in GET
      `/get_server_info`, as the `context_length` server argument and `max_req_input_len`).
    - POST `/generate` {input_ids, sampling_params {max_new_tokens, temperature, top_p, top_k, stop_token_ids,
      sampling_seed, ...}, stream, return_logprob, logprob_start_len}: `{text, output_ids, meta_info {id,
      finish_reason, prompt_tokens, completion_tokens, cached_tokens, ...}}`, streamed one event per token with the
      output so far (`output_ids` and `meta_info.output_token_logprobs` [[log P, id, None], ...], cumulative) and
      `meta_info.finish_reason` ({"type": "stop", "matched": id} or {"type": "length", "length": n}) on the last;
      with `return_logprob` and `logprob_start_len` k >= 0, `meta_info.input_token_logprobs` covers prompt positions
      k.. ([None, id, None] at position 0), and the prefix cache is used only up to position k (as SGLang limits its
      prefix match). An unknown sampling parameter fails the request (400)."""

    kind = "sglang"
    generation_paths = ("/generate",)

    def route(self, method: str, path: str) -> Callable[[Any], Reply] | None:
        return {
            ("GET", "/health"): lambda _: (200, EMPTY),
            ("GET", "/health_generate"): lambda _: (200, EMPTY),
            ("GET", "/get_model_info"): self.model_info,
            ("GET", "/get_server_info"): self.server_info,
            ("POST", "/generate"): self.generate,
        }.get((method, path))

    def model_info(self, _: Any) -> Reply:
        return 200, {
            "model_path": self.model_name,
            "tokenizer_path": self.model_name,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
        }

    def server_info(self, _: Any) -> Reply:
        return 200, {
            "model_path": self.model_name,
            "context_length": self.context_window,
            "max_total_num_tokens": 16 * self.context_window,
            "max_req_input_len": self.context_window - 1,
            "version": "fake",
        }

    def generate(self, body: dict[str, Any]) -> Reply:
        self.check_fields(body, SGLANG_GENERATE_FIELDS, "generate")
        params = dict(body.get("sampling_params") or {})
        wrong = sorted(set(params) - SGLANG_SAMPLING_FIELDS)
        if wrong:
            raise Refused(f"SamplingParams.__init__() got an unexpected keyword argument {wrong[0]!r}")
        prompt = body.get("input_ids")
        if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) for t in prompt):
            raise Refused("this fake takes input_ids (a non-empty list of token ids)")
        max_new = int(params.get("max_new_tokens", 128))
        if len(prompt) + max_new > self.context_window:
            raise Refused(
                f"Requested token count exceeds the model's maximum context length of {self.context_window} tokens. "
                f"You requested a total of {len(prompt) + max_new} tokens: {len(prompt)} tokens from the input "
                f"messages and {max_new} tokens for the completion."
            )
        top_k = params.get("top_k")
        if top_k is not None and top_k != -1 and top_k < 1:
            raise Refused(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
        sampling = _sampling(params.get("temperature"), params.get("top_p"), top_k, params.get("sampling_seed"))
        stop_ids = {int(t) for t in params.get("stop_token_ids") or []}
        ends = stop_ids | (set() if params.get("ignore_eos") else {self.model.stop_id})
        want_lps = bool(body.get("return_logprob"))
        start = int(body.get("logprob_start_len", -1))
        start = len(prompt) - 1 if start < 0 or not want_lps else min(start, len(prompt) - 1)
        cached = self.cached_tokens(prompt, limit=start)
        out = self.model.complete(prompt, max_new, sampling, ends)
        last = out[-1][0]
        finish = {"type": "stop", "matched": last} if last in ends else {"type": "length", "length": max_new}
        rid = uuid.uuid4().hex
        inputs: list[list[Any]] = []
        if want_lps:
            lps = self.model.prompt_logprobs(prompt)
            inputs = [[None if e is None else e[0], t, None] for t, e in zip(prompt[start:], lps[start:], strict=True)]

        def event(n: int) -> dict[str, Any]:
            part = out[:n]
            meta: dict[str, Any] = {
                "id": rid,
                "finish_reason": finish if n == len(out) else None,
                "prompt_tokens": len(prompt),
                "weight_version": "default",
                "completion_tokens": n,
                "cached_tokens": cached,
            }
            if want_lps:
                meta["input_token_logprobs"] = inputs
                meta["output_token_logprobs"] = [[lp, t, None] for t, lp in part]
            if n == len(out):
                meta["e2e_latency"] = 0.0
            text = str(self.tokenizer.decode([t for t, _ in part if t not in ends], skip_special_tokens=True))
            return {"text": text, "output_ids": [t for t, _ in part], "meta_info": meta}

        if not body.get("stream"):
            return 200, event(len(out))
        return (event(n) for n in range(1, len(out) + 1))
