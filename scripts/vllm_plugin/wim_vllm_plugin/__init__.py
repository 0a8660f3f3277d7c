"""A vLLM plugin that lets a prompt-log-probability request read the prefix cache, when the request asks for it.

vLLM (v1, checked on 0.32.0) never reads the prefix cache for a request with `prompt_logprobs`, because the positions
served from the cache get no log-probabilities. WiM's `segment_pmi` scoring request (the cache cut before a segment,
the margin prompt, the margin) needs the log-probabilities of its last tokens only, which are computed either way; so
without this plugin every scoring request computes the whole text before its segment again. With it, a request whose
`vllm_xargs` holds `wim_read_prefix_cache: 1` (WiM's vLLM profile sends that on scoring requests) reads the cache like
any other; the cached positions' entries are zeros (token 0, log P 0.0): meaningless, and WiM does not read them.
With `wim_read_prefix_cache_upto: N` it reads at most the first N tokens from the cache, so the positions whose log P
WiM reads are computed even where a cached block holds them too (another margin that began with the same tokens);
without the cap such a request would have to be sent again with no cache at all.

Installed into the server's environment (`pip install scripts/vllm_plugin`; scripts/setup_vllm.sh does it); vLLM loads
it at start in every process through the `vllm.general_plugins` entry point. Without it the flag is ignored and the
scores are the same, only slower."""

from __future__ import annotations

from typing import Any

FLAG = "wim_read_prefix_cache"
UPTO = "wim_read_prefix_cache_upto"


def _extra(request: Any) -> dict[str, Any]:
    params = getattr(request, "sampling_params", None)
    return (params.extra_args or {}) if params is not None else {}


def register() -> None:
    import torch
    from vllm.v1.core.kv_cache_manager import KVCacheManager
    from vllm.v1.outputs import LogprobsTensors
    from vllm.v1.request import Request

    if getattr(Request, "_wim_patched", False):
        return
    skip = Request.get_skip_reading_prefix_cache

    def get_skip_reading_prefix_cache(self: Any) -> bool:
        if _extra(self).get(FLAG):
            return False
        return skip(self)

    computed_blocks = KVCacheManager.get_computed_blocks

    def get_computed_blocks(self: Any, request: Any) -> Any:
        upto = _extra(request).get(UPTO)
        if not isinstance(upto, int) or isinstance(upto, bool) or upto < 0:
            return computed_blocks(self, request)
        # The lookup is capped inside the method (max_cache_hit_length): cap the coordinator's search for this call
        # only (the scheduler calls this from one thread).
        find = self.coordinator.find_longest_cache_hit

        def capped(block_hashes: Any, max_cache_hit_length: int, *args: Any, **kwargs: Any) -> Any:
            return find(block_hashes, min(max_cache_hit_length, upto), *args, **kwargs)

        self.coordinator.find_longest_cache_hit = capped
        try:
            return computed_blocks(self, request)
        finally:
            del self.coordinator.find_longest_cache_hit

    empty_cpu = LogprobsTensors.empty_cpu

    def zeroed_cpu(num_positions: int, num_tokens_per_position: int) -> Any:
        # Positions served from the cache are never written: zeros, not uninitialised memory (token ids from
        # uninitialised memory would fail to detokenize).
        out = empty_cpu(num_positions, num_tokens_per_position)
        for t in out:
            if isinstance(t, torch.Tensor):
                t.zero_()
        return out

    Request.get_skip_reading_prefix_cache = get_skip_reading_prefix_cache  # type: ignore[method-assign]
    KVCacheManager.get_computed_blocks = get_computed_blocks  # type: ignore[method-assign]
    LogprobsTensors.empty_cpu = staticmethod(zeroed_cpu)  # type: ignore[method-assign,assignment]
    Request._wim_patched = True  # type: ignore[attr-defined]
