"""A transformers cache layer that appends in place instead of concatenating.

`DynamicLayer.update` concatenates the whole cache with each new token, so every decode step copies every key and
value read so far (embedded model, 2.7k tokens, CPU: 123 ms per decode step with that copy, 91 ms without). WiM
decodes many short margins over a long cache, so it pays this on every margin token. `BufferedLayer` keeps its keys
and values in a buffer with spare room and writes new tokens into it; `keys`/`values` are views of the filled part, so
the rest of transformers (masks, `crop`, `get_seq_length`) sees an ordinary `DynamicLayer`.

Sharing: `fork` gives two layers the same buffer. A layer only writes into a buffer it owns alone, so after a fork
both sides lose ownership and the first one to grow copies into a fresh buffer (copy on write). Stored document
caches are therefore never written, exactly as with plain `DynamicLayer` forks.
"""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicLayer

# Spare room on each (re)allocation: 1/8 of the length, at least this many tokens. A long cache then takes a margin
# prompt and its tokens without reallocating, and holds at most ~12% more memory than its filled length.
_MIN_SPARE_TOKENS = 64


class BufferedLayer(DynamicLayer):
    """`DynamicLayer` whose `update` writes into spare room of an owned buffer (amortized O(new tokens))."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._owns_buffer = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, added = self.get_seq_length(), key_states.shape[-2]
        needed = length + added
        kb = self._key_buffer
        if kb is None or not self._owns_buffer or needed > kb.shape[-2]:
            self._grow(key_states, value_states, length, needed)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:needed, :] = key_states
        self._value_buffer[..., length:needed, :] = value_states
        self.keys = self._key_buffer[..., :needed, :]
        self.values = self._value_buffer[..., :needed, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, needed: int) -> None:
        capacity = needed + max(_MIN_SPARE_TOKENS, needed // 8)
        new_keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        new_values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if length:
            assert self.keys is not None and self.values is not None  # length > 0: the layer holds tokens
            new_keys[..., :length, :] = self.keys
            new_values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer, self._owns_buffer = new_keys, new_values, True

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None
        self._owns_buffer = False

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)  # new tensors: the buffer no longer backs keys/values
        self._drop_buffer()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._drop_buffer()

    def _drop_buffer(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._owns_buffer = False

    def fork(self) -> BufferedLayer:
        """A layer with the same contents and no copy; neither side writes into the shared buffer afterwards."""
        twin = copy.copy(self)
        self._owns_buffer = twin._owns_buffer = False
        return twin
