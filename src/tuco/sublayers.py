"""Inside the block: its update split exactly into the attention and the MLP sublayer.

A pre-norm block adds two sublayers to its input: ``out = x + a + m``, sequentially
(a = a(x), m = m(x + a)) or in parallel (GPT-NeoX: a(x), m(x)). Each family decides what ``a`` and
``m`` are (Gemma-2/3 and OLMo-2 add their post-sublayer norms' outputs, Phi-3 and GPT-NeoX their
dropouts', OPT its ``fc2``'s, MoE blocks their expert mixtures'), so there is no table of names:
the block's direct children keep their outputs while it runs, and on the first call the two whose
outputs sum with the input to the output (float32, to a few rounding errors of the dtype) are the
block's sublayers, the earlier one the attention side (a hybrid block's convolution counts as its
attention side). A block with no such pair (a residual multiplier, a post-norm block) gets a
``ModelError`` that says so. On every later call the same two children are read, and the sum
check ``|a + m - (out - x)|_1 / |out - x|_1`` says how exact the split was.

Per head: where the attention side's output is the output of one linear layer (``o_proj``) of
input z = [head_1 | ... | head_H], head h's contribution is that layer on z with every other head
zeroed, minus the layer on zeros (its bias, reported apart): exact for any linear layer, LoRA
included. Where a norm follows the projection (Gemma-2/3) no split is exact, and ``heads`` raises.

    >>> hooks = Sublayers(blocks, heads=False, side=lambda: "ft")   # hooks on the blocks' children
    >>> block(x); attn, mlp = hooks.split(block, x, out, "ft")      # [b, s, d] each
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .blocks import hidden
from .errors import ModelError
from .lastpos import other_mixer

Side = str  # "pt" or "ft": whose block is running


class SublayerError(ModelError, ValueError):
    """A block whose update is not its input plus two sublayers (or heads that do not split)."""


def _l1(t: torch.Tensor) -> torch.Tensor:
    return t.float().abs().flatten(1).sum(-1)  # [b]


# Found once per block, on its first split, and kept while the block lives:
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> (attention side, MLP side)
_projections: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> its output projection
_not_projections: weakref.WeakSet = weakref.WeakSet()  # linear layers found not to be one (skipped)


class Sublayers:
    """Hooks on the direct children of ``blocks`` (and, with ``heads``, on their linear layers) that
    keep what ``split`` and ``heads_of`` need. ``side()`` says whose block is running ("pt"/"ft"),
    ``last(z)`` picks each row's last token from a [b, s, ...] tensor ([b, ...])."""

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        side: Callable[[], Side],
        heads: bool = False,
        num_heads: int | None = None,
        last: Callable[[torch.Tensor], torch.Tensor] | None = None,
        width: int | None = None,
    ):
        self.side, self.heads, self.num_heads, self.width = side, heads, num_heads, width
        self.last = last or (lambda z: z[:, -1])
        self.outputs: dict[Side, dict[str, torch.Tensor]] = {"pt": {}, "ft": {}}
        self.order: dict[Side, list[str]] = {"pt": [], "ft": []}
        self.projected: dict[Side, dict[nn.Module, tuple[torch.Tensor, ...]]] = {"pt": {}, "ft": {}}
        self._inside_head_call = False
        self.want_heads = heads  # off for passes that record nothing (decoding steps)
        self._handles: list = []
        for block in {id(b): b for b in blocks}.values():
            for name, child in block.named_children():
                self._handles.append(child.register_forward_hook(self._keep(name)))
            if heads:
                inner = {
                    id(m.base_layer)
                    for m in block.modules()
                    if isinstance(getattr(m, "base_layer", None), nn.Module)
                }
                for m in block.modules():
                    if _is_linear(m) and id(m) not in inner:  # a LoRA layer's base: its wrapper is the layer
                        self._handles.append(m.register_forward_hook(self._per_head))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self, side: Side) -> None:
        """Forget what the last block call of ``side`` left (call before each block runs)."""
        self.outputs[side], self.order[side], self.projected[side] = {}, [], {}

    def _keep(self, name: str):
        def hook(module, args, output):
            if self._inside_head_call:
                return
            side = self.side()
            out = hidden(output)
            if isinstance(out, torch.Tensor):
                self.outputs[side][name] = out
                self.order[side].append(name)

        return hook

    def _per_head(self, module, args, output):
        """Per head, at each row's last token: the layer on its head alone minus on zeros, and the
        bias part (the layer on zeros): ([b, H, d], [b, d], the layer's output [b, d])."""
        if (
            not self.want_heads
            or self._inside_head_call
            or module in _not_projections
            or not args
            or not isinstance(output, torch.Tensor)
        ):
            return
        z = args[0]
        if self.num_heads is None or z.shape[-1] % self.num_heads or output.shape[-1] != self.width:
            return  # not an output projection: heads in, the residual stream's width out
        z_last = (z[:, -1] if z.shape[1] == 1 else self.last(z)) if z.dim() == 3 else z
        b, width = z_last.shape
        mask = torch.eye(self.num_heads, device=z.device, dtype=z.dtype).repeat_interleave(
            width // self.num_heads, dim=1
        )  # [H, H*hd]
        masked = (z_last[:, None, :] * mask).reshape(b * self.num_heads, width)
        self._inside_head_call = True
        try:
            per_head = module(masked).float().reshape(b, self.num_heads, -1)
            bias = module(torch.zeros_like(z_last[:1])).float()  # [1, d]
        finally:
            self._inside_head_call = False
        out_last = (
            output if output.dim() == 2 else (output[:, -1] if output.shape[1] == 1 else self.last(output))
        )
        self.projected[self.side()][module] = (per_head - bias[:, None], bias.expand(b, -1), out_last.float())

    # ------------------------------------------------------------------ reading
    def split(self, block: nn.Module, x: torch.Tensor, out: torch.Tensor, side: Side, layer: int = -1):
        """(attention side, MLP side) of ``block``'s last call by ``side``, each shaped like ``out``."""
        outputs = self.outputs[side]
        plan = _plans.get(block)
        if plan is None:
            plan = _plans[block] = self._discover(block, x, out, side, layer)
        missing = [n for n in plan if n not in outputs]
        if missing:
            raise SublayerError(f"block {layer}: its child {missing[0]!r} did not run this time")
        return tuple(_like(outputs[n], out) for n in plan)

    @torch.no_grad()
    def _discover(self, block, x, out, side, layer) -> tuple[str, str]:
        names = list(dict.fromkeys(reversed(self.order[side])))[::-1]  # call order, last call of each
        found = {n: t for n in names if (t := _like(self.outputs[side][n], out)) is not None}
        update = out.float() - x.float()
        best, best_err = None, float("inf")
        for i, a in enumerate(found):
            for m in list(found)[i + 1 :]:
                parts = found[a].float() + found[m].float()
                err = float((_l1(parts - update) / _l1(update).clamp_min(1e-30)).max())
                if err <= best_err:
                    best, best_err = (a, m), err
        scale = float((_l1(out) / _l1(update).clamp_min(1e-30)).max())
        tolerance = min(0.25, max(1e-5, 64 * torch.finfo(out.dtype).eps * scale))  # the dtype's rounding
        if best is None or best_err > tolerance:
            raise SublayerError(
                f"block {layer} ({type(block).__name__}): its output is not its input plus two of its "
                f"sublayers' outputs (children: {', '.join(names) or 'none'}; best pair off by "
                f"{best_err:.2g} relative), for example a residual multiplier or a post-norm block: "
                "the attention/MLP split is not exact for this family. Score without components."
            )
        return best

    def heads_of(self, block: nn.Module, attn: torch.Tensor, side: Side, layer: int = -1):
        """([b, H, d] per-head contributions, [b, d] bias part) at the last token, of the linear layer
        whose output is the attention side ``attn`` ([b, d], that token's); raises where none is."""
        projected = self.projected[side]
        layer_module = _projections.get(block)
        if layer_module is None:
            mixer = other_mixer(block.get_submodule(_plans[block][0]))
            if mixer is not None:
                raise SublayerError(
                    f"block {layer} ({type(block).__name__}): its sequence mixer is {mixer}, not "
                    "attention: it has no heads. Score without heads (components still apply)."
                )
            for m, (_, _, out) in projected.items():
                if out.shape == attn.shape and torch.equal(out, attn.float()):
                    layer_module = _projections[block] = m
            if layer_module is not None:
                _not_projections.update(m for m in projected if m is not layer_module)
            if layer_module is None:
                raise SublayerError(
                    f"block {layer} ({type(block).__name__}): the attention side's output is not the "
                    "output of one linear layer (a norm follows the output projection, as in "
                    "Gemma-2/3): a per-head split is not exact here. Score without heads."
                )
        if layer_module not in projected:
            raise SublayerError(f"block {layer}: its attention output layer did not run this time")
        per_head, bias, _ = projected[layer_module]
        return per_head, bias


def _like(t: torch.Tensor, out: torch.Tensor):
    """``t`` shaped like the block output ``out`` [b, s, d]: flattened tokens ([b*s, d], OPT) are
    reshaped, and a block run on every position whose output was cut to the last one ([b, 1, d],
    the fast path's fallback) has its children's outputs cut alike; None if ``t`` is no such tensor."""
    if t.dim() == 3 and out.dim() == 3 and t.shape[0] == out.shape[0] and t.shape[-1] == out.shape[-1]:
        return t[:, -out.shape[1] :]
    return t.reshape(out.shape) if t.numel() == out.numel() else None


def _is_linear(m: nn.Module) -> bool:
    """nn.Linear, a PEFT LoRA linear, or transformers' Conv1D (GPT-2's [in, out] linear)."""
    name = type(m).__name__
    return (
        isinstance(m, nn.Linear) or name == "Conv1D" or isinstance(getattr(m, "base_layer", None), nn.Linear)
    )
