"""Rows of transformers' dynamic KV cache, joined and trimmed: what continuous batching needs.

A running batch is left-padded: every row's tokens end at the last column, its padding (masked out
by the attention mask) before them. Two such batches of lengths T_a and T_b join into one of length
max(T_a, T_b) by padding the shorter on the left; when rows leave, the columns that every row left
has as padding are trimmed off. Both keep a left-padded batch's invariants (each row contiguous and
right-aligned), which transformers' masks, sliding windows included, already handle::

    >>> if joinable(cache_a) and joinable(cache_b):
    ...     join(cache_a, cache_b)                  # cache_a now holds a's rows, then b's
    ...     mask = join_masks(mask_a, mask_b)       # [b_a + b_b, max(T_a, T_b)]
    >>> k = padding_columns(mask)                  # leading columns no row uses
    >>> trim(cache_a, k); mask = mask[:, k:]

Sliding-window layers store only their last ``window - 1`` columns and count every column in
``cumulative_length``; both are kept consistent here. Other cache layers (static, quantized,
recurrent) are not joinable: ``joinable`` says so, and the caller keeps such batches apart.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

_JOINABLE = (DynamicLayer, DynamicSlidingWindowLayer)


def joinable(cache: Any) -> bool:
    """Whether ``cache`` is a dynamic cache whose layers ``join`` and ``trim`` know."""
    layers = getattr(cache, "layers", None) or []
    return bool(layers) and all(type(layer) in _JOINABLE for layer in layers)


def length(layer: Any) -> int:
    """Columns the layer's rows span (stored or, past a sliding window, counted)."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return int(layer.cumulative_length)
    return int(layer.keys.shape[-2]) if layer.is_initialized and layer.keys is not None else 0


def _stored(layer: Any, total: int) -> int:
    """Columns a layer of ``total`` columns stores."""
    if isinstance(layer, DynamicSlidingWindowLayer):
        return min(total, layer.sliding_window - 1)
    return total


def _left_padded(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """[b, h, s, d] -> [b, h, width, d], zeros before."""
    return F.pad(tensor, (0, 0, width - tensor.shape[-2], 0)) if tensor.shape[-2] < width else tensor


def join(a: Any, b: Any) -> None:
    """Append the rows of cache ``b`` to cache ``a`` (in place), both left-padded to their longer length."""
    for into, other in zip(a.layers, b.layers, strict=True):
        if not (into.is_initialized and other.is_initialized):
            if into.is_initialized or other.is_initialized:
                raise ValueError("cannot join a cache layer that holds tokens with one that holds none")
            continue  # e.g. a layer that shares another layer's keys and values
        total = max(length(into), length(other))
        width = _stored(into, total)
        into.keys = torch.cat([_left_padded(into.keys, width), _left_padded(other.keys, width)])
        into.values = torch.cat([_left_padded(into.values, width), _left_padded(other.values, width)])
        if isinstance(into, DynamicSlidingWindowLayer):
            into.cumulative_length = total


def join_masks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Attention masks [b_a, T_a] and [b_b, T_b] -> [b_a + b_b, max(T_a, T_b)], zeros before."""
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (width - a.shape[1], 0)), F.pad(b, (width - b.shape[1], 0))])


def padding_columns(mask: torch.Tensor) -> int:
    """How many leading columns of an attention mask [b, T] are padding in every row."""
    used = mask.bool().any(0).nonzero()
    return int(used[0]) if len(used) else mask.shape[1]


def trim(cache: Any, columns: int) -> None:
    """Drop the first ``columns`` columns of every layer (in place): columns no row uses."""
    if columns <= 0:
        return
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        total = length(layer) - columns
        keep = _stored(layer, total)
        if keep < layer.keys.shape[-2]:
            layer.keys = layer.keys[..., layer.keys.shape[-2] - keep :, :]
            layer.values = layer.values[..., layer.values.shape[-2] - keep :, :]
        if isinstance(layer, DynamicSlidingWindowLayer):
            layer.cumulative_length = total
