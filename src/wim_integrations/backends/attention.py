"""`wim_sdpa`: transformers' SDPA attention, with grouped-query attention kept native under an explicit mask on CPU.

WiM's packed forwards pass a 4D mask (each row sees the cache up to its own segment). Under a mask, transformers'
`sdpa` expands the key/value heads of a grouped-query model (`repeat_kv`) before calling torch, copying the whole
cache on every layer of every packed step; on the CPU that copy is about half of a packed decode step. Torch's CPU
kernel accepts a mask together with `enable_gqa=True`, so this variant passes the cache as is there, and hands every
other call (no mask, a single query, any other device) to transformers' `sdpa` unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "wim_sdpa"


def wim_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = getattr(module, "num_key_value_groups", 1)
    native_gqa = (
        attention_mask is not None
        and groups > 1
        and query.shape[2] > 1
        and query.device.type == "cpu"
        and kwargs.get("position_bias") is None
        and kwargs.get("cache") is None  # a paged (continuous-batching) cache is transformers' business
        and kwargs.get("softcap") is None
        and not kwargs.get("output_attentions", False)
    )
    if not native_gqa:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True
    )
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def wim_sdpa(model: Any) -> Iterator[bool]:
    """Run the block with a model that uses transformers' `sdpa` switched to `wim_sdpa`, then switch it back.

    The model may be shared with other pipelines, so it is never left switched; callers hold the backend's lock for
    the block. Registering the name in transformers' attention registry is global but changes no other model. Yields
    whether the model was switched (models on eager, flash or other attention keep theirs)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        yield False
        return
    AttentionInterface.register(NAME, wim_sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)  # about 1 ms a pair on a 30-layer model, against a packed step of 10s of ms
    try:
        yield model.config._attn_implementation == NAME
    finally:
        model.set_attn_implementation("sdpa")
