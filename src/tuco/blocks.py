"""Find the decoder blocks of a causal LM, without a table of architectures.

transformers' own metadata names the block class of every model: ``_no_split_modules`` (what
accelerate must keep on one device) and, in 5.x, ``GradientCheckpointingLayer`` as the blocks'
base class. The blocks are the ``nn.ModuleList`` whose items are such classes and whose length is
``config.num_hidden_layers``::

    >>> blocks = find_blocks(model)            # model.model.layers for Llama, transformer.h for GPT-2
    >>> blocks = find_blocks(model, "model.layers")   # explicit override for exotic models
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

from .errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

try:  # transformers >= 4.48
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # pragma: no cover - older transformers
    GradientCheckpointingLayer = ()  # type: ignore[assignment,misc]


class BlockDiscoveryError(ModelError, ValueError):
    """The decoder blocks of a model could not be located."""


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return cast("PreTrainedModel", get_base() if callable(get_base) else model)


def embedding_weight(model: nn.Module) -> torch.Tensor:
    """The input embedding matrix [vocab, d] of a model (PEFT-wrapped or not): its device is where
    inputs go, its first dimension the vocabulary size."""
    return cast(torch.Tensor, unwrap(model).get_input_embeddings().weight)


def num_layers(model: nn.Module) -> int | None:
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return None
    return getattr(config.get_text_config(), "num_hidden_layers", None)


def find_blocks(model: nn.Module, block_path: str | None = None) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks of ``model`` (a causal LM, possibly PEFT-wrapped).

    ``block_path`` is a dotted attribute path from the transformers model (``"model.layers"``,
    ``"transformer.h"``) that overrides the search.
    """
    model = unwrap(model)
    if block_path is not None:
        module = model
        for name in block_path.split("."):
            if not hasattr(module, name):
                raise BlockDiscoveryError(
                    f"block_path={block_path!r}: {type(module).__name__} has no attribute {name!r}."
                )
            module = getattr(module, name)
        if not isinstance(module, nn.ModuleList):
            raise BlockDiscoveryError(
                f"block_path={block_path!r} points to a {type(module).__name__}, not an nn.ModuleList."
            )
        return module

    block_names = set(getattr(model, "_no_split_modules", None) or [])
    n = num_layers(model)

    def is_block(m: nn.Module) -> bool:
        return type(m).__name__ in block_names or (
            bool(GradientCheckpointingLayer) and isinstance(m, GradientCheckpointingLayer)
        )

    candidates = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and all(is_block(b) for b in m)
    ]
    if n is not None:
        candidates = [(name, m) for name, m in candidates if len(m) == n]
    if len(candidates) == 1:
        return candidates[0][1]
    found = ", ".join(name for name, _ in candidates) or "none"
    raise BlockDiscoveryError(
        f"Cannot locate the decoder blocks of {type(model).__name__} "
        f"(block lists found: {found}; expected one with {n} blocks). "
        'Pass the path to the nn.ModuleList of blocks explicitly, e.g. block_path="model.layers".'
    )


def contiguous_unembedding(model: nn.Module) -> None:
    """Make the unembedding take a contiguous input (once per model; a no-op where it already is).

    transformers slices the last position for ``logits_to_keep`` (``hidden[:, -1:, :]``), and torch's
    CPU linear on such a slice copies the weight out per row: in bf16 an 8 x 1 x 512 slice against
    a 32000-token vocabulary took 276 ms instead of 3.4 ms (Gemma-3's 262144 tokens: 14 s a prefill).
    """
    head = unwrap(model).get_output_embeddings()
    if head is None or getattr(head, "_tuco_contiguous", False):
        return
    head.register_forward_pre_hook(_contiguous_first)
    head._tuco_contiguous = True


def _contiguous_first(module: nn.Module, args: tuple):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def hidden(output: Any) -> torch.Tensor:
    """A block's output tensor [b, s, d]: block outputs are a tensor in transformers 5.x, a tuple
    (hidden, ...) in 4.x."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden_states: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced (the same form: tensor or tuple)."""
    return (hidden_states, *output[1:]) if isinstance(output, tuple) else hidden_states
