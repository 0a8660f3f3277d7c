"""A transformers cache layer that appends in place instead of concatenating.

`DynamicLayer.update` concatenates the whole cache with each new token, so every decode step copies every key and
value read so far (embedded model, 2.7k tokens, CPU: 123 ms per decode step with that copy, 91 ms without). WiM
decodes many short margins over a long cache, so it pays this on every margin token. `BufferedLayer` keeps its keys
and values in a buffer with spare room and writes new tokens into it; `keys`/`values` are views of the filled part, so
the rest of transformers (masks, `crop`, `get_seq_length`) sees an ordinary `DynamicLayer`.

Sharing: `fork` gives two layers the same buffer. After a fork neither side owns it, and every position a fork can
see (up to the longest view, `_Share.frozen`) is read-only for all of them. Beyond that, one layer at a time (the
first to get there, while it lives) may go on appending into the spare room: a run answering from a stored document
cache writes its margins and answer there instead of copying the whole document first. Any other write copies into a
fresh buffer (copy on write). Stored document caches are therefore never written, exactly as with plain
`DynamicLayer` forks.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

# Spare room on each (re)allocation: 1/8 of the length, at least this many tokens. A long cache then takes a margin
# prompt and its tokens without reallocating, and holds at most ~12% more memory than its filled length.
_MIN_SPARE_TOKENS = 64


@dataclass
class _Share:
    """What the forks of one buffer agree on: positions below `frozen` are seen by some fork and never written; past
    it only `writer` (a weak reference: a dead writer frees the room) appends."""

    frozen: int
    writer: weakref.ref[BufferedLayer] | None = None

    def may_append(self, layer: BufferedLayer, start: int) -> bool:
        holder = self.writer() if self.writer is not None else None
        if start < self.frozen or (holder is not None and holder is not layer):
            return False
        self.writer = weakref.ref(layer)
        return True


class BufferedLayer(DynamicLayer):
    """`DynamicLayer` whose `update` writes into spare room of an owned buffer (amortized O(new tokens))."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._owns_buffer = False
        self._share: _Share | None = None  # set while the buffer is shared with forks
        self._reserved = 0  # capacity to allocate at once (see `reserve`)

    def reserve(self, n_tokens: int) -> None:
        """Allocate room for `n_tokens` at the next (re)allocation: a run that knows its final length grows once,
        instead of copying the whole cache at each growth (a moment with two copies: the peak of memory)."""
        self._reserved = n_tokens

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, added = self.get_seq_length(), key_states.shape[-2]
        needed = length + added
        kb = self._key_buffer
        fits = kb is not None and needed <= kb.shape[-2]
        if not (fits and (self._owns_buffer or (self._share is not None and self._share.may_append(self, length)))):
            self._grow(key_states, value_states, length, needed)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:needed, :] = key_states
        self._value_buffer[..., length:needed, :] = value_states
        self.keys = self._key_buffer[..., :needed, :]
        self.values = self._value_buffer[..., :needed, :]
        return self.keys, self.values

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, length: int, needed: int) -> None:
        capacity = max(needed + max(_MIN_SPARE_TOKENS, needed // 8), self._reserved)
        new_keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
        new_values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
        if length:
            assert self.keys is not None and self.values is not None  # length > 0: the layer holds tokens
            new_keys[..., :length, :] = self.keys
            new_values[..., :length, :] = self.values
        self._key_buffer, self._value_buffer, self._owns_buffer = new_keys, new_values, True
        self._share = None

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None
        self._owns_buffer, self._share = False, None

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)  # new tensors: the buffer no longer backs keys/values
        self._drop_buffer()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._drop_buffer()

    def _drop_buffer(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._owns_buffer, self._share = False, None

    def compact(self) -> BufferedLayer:
        """A copy holding exactly this layer's tokens, in a buffer of its own with no spare room (what a document cache
        stores: the room a run reserved for its peak is not kept alive with it)."""
        twin = copy.copy(self)
        if self._key_buffer is None or self.keys is None or self.values is None:
            return twin
        twin.keys = self.keys.clone(memory_format=torch.contiguous_format)
        twin.values = self.values.clone(memory_format=torch.contiguous_format)
        twin._key_buffer, twin._value_buffer = twin.keys, twin.values
        twin._owns_buffer, twin._share, twin._reserved = True, None, 0
        return twin

    def fork(self) -> BufferedLayer:
        """A layer with the same contents and no copy. Neither side writes what either can see afterwards; one of them
        may still append past it (see the module docstring)."""
        twin = copy.copy(self)
        self._owns_buffer = twin._owns_buffer = False
        if self._key_buffer is not None:
            length = self.get_seq_length()
            if self._share is None:
                self._share = _Share(frozen=length)
            else:
                self._share.frozen = max(self._share.frozen, length)
            twin._share = self._share
        return twin
