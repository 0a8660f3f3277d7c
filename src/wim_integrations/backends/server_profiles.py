"""What differs between serving engines: request bodies, where token ids / log-probabilities / prefix-cache counts sit
in a reply, and what each can do. `ServerBackend` holds one profile; everything else is shared.

Verified against a real server in the tests: llama.cpp's `llama-server`; vLLM's CPU build has tests of its own
(tests/server/test_vllm_server.py, see docs/serving.md for what has run). SGLang follows its documented API, checked
against a fake HTTP engine built from it (tests/server/fake_engines.py), not against the real one."""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import SamplingConfig
from ..errors import ServerResponseError
from .base import Capabilities

Body = dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """Prompt tokens of one request: how many the server reused from its prefix cache and how many it computed."""

    cached: int | None = None
    computed: int | None = None


class Profile:
    """One serving engine's API. `slot` is llama.cpp's per-document slot (None elsewhere)."""

    name = "openai"
    health_path = "/v1/models"
    cumulative = False  # stream events carry the whole output so far (SGLang), not just what is new
    capabilities = Capabilities(packed_rows=True, concurrent_requests=True)

    def __init__(self, model: str | None, cache_salt: str | None = None, reuse_prefix: bool = True) -> None:
        self.model = model
        self.cache_salt = cache_salt
        self.reuse_prefix = reuse_prefix  # False: ask the server not to reuse cached prefixes (where it can be asked)

    # -- requests ----------------------------------------------------------------------------------------------
    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: SamplingConfig,
        stop_ids: Sequence[int],
        logprobs: bool,
        slot: int | None,
    ) -> tuple[str, Body]:
        """A streamed completion of token ids."""
        body: Body = {
            "prompt": list(prompt),
            "max_tokens": max_tokens,
            "stream": True,
            "logprobs": 1 if logprobs else None,
            **_openai_sampling(sampling),
        }
        return "/v1/completions", self._with_model(body)

    def warm(self, prompt: Sequence[int], slot: int | None) -> tuple[str, Body]:
        """A request that only puts `prompt` into the server's prefix cache."""
        return "/v1/completions", self._with_model({"prompt": list(prompt), "max_tokens": 1, "temperature": 0})

    def score(
        self, prompt: Sequence[int], slot: int | None, read_cache: bool = True, needed: int = 0
    ) -> tuple[str, Body]:
        """A request for the prompt's log-probabilities; `read_cache=False`: computed whole, none read from a cache.
        `needed`: the log-probabilities of the last `needed` tokens are read, so a cache may serve only what is
        before them (and the token before them, whose logits give the first)."""
        raise NotImplementedError(f"the {self.name} profile offers no prompt log-probabilities")

    def tokenize(self, text: str) -> tuple[str, Body] | None:
        return None

    # -- replies -----------------------------------------------------------------------------------------------
    def chunk_tokens(self, event: Any, encode: Any) -> list[tuple[int, float | None]]:
        """(token id, log P) of the tokens a stream event adds."""
        choice = _first_choice(event)
        if choice is None:
            return []
        ids = choice.get("token_ids")
        lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if ids is None:
            tokens = (choice.get("logprobs") or {}).get("tokens")
            if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
                ids = [int(t.split(":", 1)[1]) for t in tokens]
            else:  # a plain OpenAI-compatible server: only text comes back, so it is encoded again (documented)
                ids = encode(choice.get("text") or "")
                lps = []
        return [(int(t), float(lps[k]) if k < len(lps) and lps[k] is not None else None) for k, t in enumerate(ids)]

    def is_final(self, event: Any) -> bool:
        """Whether a stream event is the completion's last (a stream that ends without one was cut off)."""
        choice = _first_choice(event)
        return choice is not None and choice.get("finish_reason") is not None

    def usage(self, event: Any) -> Usage | None:
        u = event.get("usage") if isinstance(event, dict) else None
        if not u:
            return None
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
        prompt = u.get("prompt_tokens")
        return Usage(cached, prompt - cached if prompt is not None and cached is not None else None)

    def prompt_logprobs(self, reply: Any, prompt: Sequence[int], tail: int) -> list[float]:
        """log P of each of the last `tail` prompt tokens given the tokens before it (tail < len(prompt)); NaN where
        the server served that position from its prefix cache and computed nothing."""
        raise NotImplementedError

    def tokens_of(self, reply: Any) -> list[int]:
        return [int(t) for t in reply["tokens"]]

    def window(self, client: Any) -> int | None:
        models = client.get_json("/v1/models")
        data = models.get("data") or [{}]
        entry = next((m for m in data if m.get("id") == self.model), data[0])
        n = entry.get("max_model_len")
        return int(n) if n else None

    def _with_model(self, body: Body) -> Body:
        body = {k: v for k, v in body.items() if v is not None}
        if self.model:
            body["model"] = self.model
        return body


class VLLMProfile(Profile):
    """vLLM's OpenAI-compatible server: `/v1/completions` with a token-id prompt, token ids and log-probabilities in
    the stream, `cache_salt` to keep tenants' prefix caches apart, `prompt_logprobs` for scoring."""

    name = "vllm"
    health_path = "/health"
    # "rows": a scoring request is any token prompt, so a row that sees only the text before its segment is the
    # cache cut there plus the row (what `segment_pmi` needs).
    capabilities = Capabilities(
        packed_rows=True, scoring="rows", generation_logprobs=True, concurrent_requests=True, overlap=True
    )

    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: SamplingConfig,
        stop_ids: Sequence[int],
        logprobs: bool,
        slot: int | None,
    ) -> tuple[str, Body]:
        body: Body = {
            "prompt": list(prompt),
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop_token_ids": sorted(stop_ids),
            "ignore_eos": False,
            "skip_special_tokens": True,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "logprobs": 0 if logprobs else None,
            "cache_salt": self._salt(),
            **_openai_sampling(sampling),
            "top_k": sampling.top_k if sampling.do_sample and sampling.top_k else -1,
            "min_p": 0.0,
            "repetition_penalty": sampling.repetition_penalty,
        }
        return "/v1/completions", self._with_model(body)

    def warm(self, prompt: Sequence[int], slot: int | None) -> tuple[str, Body]:
        body = {"prompt": list(prompt), "max_tokens": 1, "temperature": 0, "cache_salt": self._salt()}
        return "/v1/completions", self._with_model(body)

    def score(
        self, prompt: Sequence[int], slot: int | None, read_cache: bool = True, needed: int = 0
    ) -> tuple[str, Body]:
        # vLLM does not read its prefix cache for prompt log-probabilities; with WiM's plugin (scripts/vllm_plugin)
        # this request may, up to the tokens whose log P is read: a cached block can hold them too (another
        # request's margin that began with the same tokens), and cached positions get no log P. Ignored without it.
        xargs = {"wim_read_prefix_cache": 1, "wim_read_prefix_cache_upto": max(0, len(prompt) - needed - 1)}
        body = {
            "prompt": list(prompt),
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": 0,
            "cache_salt": self._salt(),
            "vllm_xargs": xargs if self.reuse_prefix and read_cache else None,
        }
        return "/v1/completions", self._with_model(body)

    def prompt_logprobs(self, reply: Any, prompt: Sequence[int], tail: int) -> list[float]:
        entries = (_first_choice(reply) or {}).get("prompt_logprobs")
        if not entries or len(entries) != len(prompt):
            raise ServerResponseError("vLLM sent no prompt_logprobs for a scoring request (is the server too old?)")
        out = []  # positions served from the prefix cache (plugin) name another token (zeros): NaN
        for tok, entry in zip(prompt[len(prompt) - tail :], entries[len(prompt) - tail :], strict=True):
            item = entry.get(str(tok)) or entry.get(tok)
            out.append(math.nan if item is None else float(item["logprob"] if isinstance(item, dict) else item))
        return out

    def tokenize(self, text: str) -> tuple[str, Body] | None:
        return "/tokenize", self._with_model({"prompt": text, "add_special_tokens": False})

    def _salt(self) -> str | None:
        """The request's `cache_salt`: the tenant's, or with reuse_prefix=False a new one per request, so no request
        finds anything in the prefix cache (vLLM can be asked for that only this way)."""
        return self.cache_salt if self.reuse_prefix else secrets.token_hex(8)


class SGLangProfile(Profile):
    """SGLang's native `/generate` with `input_ids`: token ids, log-probabilities and `cached_tokens` in `meta_info`."""

    name = "sglang"
    health_path = "/health"
    capabilities = Capabilities(
        packed_rows=True, scoring="rows", generation_logprobs=True, concurrent_requests=True, overlap=True
    )

    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: SamplingConfig,
        stop_ids: Sequence[int],
        logprobs: bool,
        slot: int | None,
    ) -> tuple[str, Body]:
        params: Body = {
            "max_new_tokens": max_tokens,
            "temperature": sampling.temperature if sampling.do_sample else 0.0,
            "top_p": sampling.top_p if sampling.do_sample else 1.0,
            "top_k": sampling.top_k if sampling.do_sample and sampling.top_k else -1,
            "min_p": 0.0,
            "repetition_penalty": sampling.repetition_penalty,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "stop_token_ids": sorted(stop_ids),
            "ignore_eos": False,
            "skip_special_tokens": True,
        }
        if sampling.do_sample and sampling.seed is not None:
            params["sampling_seed"] = sampling.seed
        body: Body = {"input_ids": list(prompt), "sampling_params": params, "stream": True}
        if logprobs:
            body |= {"return_logprob": True, "logprob_start_len": -1}
        return "/generate", body

    def warm(self, prompt: Sequence[int], slot: int | None) -> tuple[str, Body]:
        return "/generate", {"input_ids": list(prompt), "sampling_params": {"max_new_tokens": 1, "temperature": 0}}

    def score(
        self, prompt: Sequence[int], slot: int | None, read_cache: bool = True, needed: int = 0
    ) -> tuple[str, Body]:
        params = {"max_new_tokens": 1, "temperature": 0}
        return "/generate", {
            "input_ids": list(prompt),
            "sampling_params": params,
            "return_logprob": True,
            "logprob_start_len": 0,
        }

    def chunk_tokens(self, event: Any, encode: Any) -> list[tuple[int, float | None]]:
        # Each event carries the whole output so far; the backend keeps what it already handed on (see `cumulative`).
        meta = event.get("meta_info") or {}
        lps = meta.get("output_token_logprobs")
        if lps:
            return [(int(e[1]), float(e[0]) if e[0] is not None else None) for e in lps]
        return [(int(t), None) for t in event.get("output_ids") or []]

    cumulative = True

    def is_final(self, event: Any) -> bool:
        return (event.get("meta_info") or {}).get("finish_reason") is not None

    def usage(self, event: Any) -> Usage | None:
        meta = event.get("meta_info") if isinstance(event, dict) else None
        if not meta or "cached_tokens" not in meta:
            return None
        cached, prompt = meta.get("cached_tokens"), meta.get("prompt_tokens")
        return Usage(cached, prompt - cached if prompt is not None and cached is not None else None)

    def prompt_logprobs(self, reply: Any, prompt: Sequence[int], tail: int) -> list[float]:
        entries = (reply.get("meta_info") or {}).get("input_token_logprobs")
        if not entries or len(entries) != len(prompt):
            raise ServerResponseError("SGLang sent no input_token_logprobs for a scoring request")
        return [float(e[0]) if e[0] is not None else float("-inf") for e in entries[len(prompt) - tail :]]  # null: -inf

    def window(self, client: Any) -> int | None:
        info = client.get_json("/get_server_info")
        n = info.get("context_length") or info.get("max_req_input_len")
        return int(n) if n else None


class LlamaCppProfile(Profile):
    """llama.cpp's `llama-server`: `/completion` with a token array, `cache_prompt`, one slot per document
    (`id_slot`: its prefix reuse is per slot, so a document's margins go to it in order), `n_probs` for the
    log-probability of each generated token. No prompt log-probabilities: PMI and calibrated scores are not offered."""

    name = "llama.cpp"
    health_path = "/health"
    capabilities = Capabilities(packed_rows=False, scoring="none", generation_logprobs=True)

    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: SamplingConfig,
        stop_ids: Sequence[int],
        logprobs: bool,
        slot: int | None,
    ) -> tuple[str, Body]:
        greedy = not sampling.do_sample
        body: Body = {
            "prompt": list(prompt),
            "n_predict": max_tokens,
            "stream": True,
            "cache_prompt": self.reuse_prefix,
            "return_tokens": True,
            # Cache statistics in every chunk, not only the last: a margin complete by its stop rule closes the
            # stream before the last.
            "timings_per_token": True,
            "id_slot": -1 if slot is None else slot,
            # Every sampler set explicitly: the server's defaults (temperature 0.8, top_k 40, min_p 0.05, ...)
            # would otherwise apply. Greedy: temperature 0 is argmax.
            "temperature": 0.0 if greedy else sampling.temperature,
            "top_k": 0 if greedy or not sampling.top_k else sampling.top_k,
            "top_p": 1.0 if greedy else sampling.top_p,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": sampling.repetition_penalty,
            "repeat_last_n": len(prompt) + max_tokens,  # the whole history, as transformers applies it
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "top_n_sigma": -1.0,
            "mirostat": 0,
            "ignore_eos": False,
            "n_probs": 1 if logprobs else 0,
            "post_sampling_probs": False,
        }
        if sampling.do_sample and sampling.seed is not None:
            body["seed"] = sampling.seed
        return "/completion", body

    def warm(self, prompt: Sequence[int], slot: int | None) -> tuple[str, Body]:
        body = {"prompt": list(prompt), "n_predict": 0, "cache_prompt": True, "id_slot": -1 if slot is None else slot}
        return "/completion", body

    def tokenize(self, text: str) -> tuple[str, Body] | None:
        return "/tokenize", {"content": text, "add_special": False, "parse_special": True}

    def chunk_tokens(self, event: Any, encode: Any) -> list[tuple[int, float | None]]:
        ids = event.get("tokens") or []
        probs = event.get("completion_probabilities") or []
        return [
            (int(t), float(probs[k]["logprob"]) if k < len(probs) and "logprob" in probs[k] else None)
            for k, t in enumerate(ids)
        ]

    def is_final(self, event: Any) -> bool:
        return event.get("stop") is True

    def usage(self, event: Any) -> Usage | None:
        timings = event.get("timings") if isinstance(event, dict) else None
        if not timings or "cache_n" not in timings:
            return None
        return Usage(int(timings["cache_n"]), int(timings.get("prompt_n", 0)))

    def window(self, client: Any) -> int | None:
        props = client.get_json("/props")
        n = (props.get("default_generation_settings") or {}).get("n_ctx") or props.get("n_ctx")
        return int(n) if n else None

    def slots(self, client: Any) -> int:
        return int(client.get_json("/props").get("total_slots") or 1)


PROFILES: dict[str, type[Profile]] = {
    "llama.cpp": LlamaCppProfile,
    "vllm": VLLMProfile,
    "sglang": SGLangProfile,
    "openai": Profile,
}


def _first_choice(event: Any) -> dict[str, Any] | None:
    choices = event.get("choices") if isinstance(event, dict) else None
    return choices[0] if choices else None


def _openai_sampling(sampling: SamplingConfig) -> Body:
    greedy = not sampling.do_sample
    body: Body = {
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    if sampling.do_sample and sampling.seed is not None:
        body["seed"] = sampling.seed
    return body
