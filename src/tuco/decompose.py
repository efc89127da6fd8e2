"""The heart of tuco: split every block update of a fine-tuned model into PTC and FTC.

While the fine-tuned (FT) model runs its own forward pass, each FT block l also runs the
pre-trained (PT) block l on exactly the same arguments: hidden states, attention mask (per-block
sliding windows included), position ids, rotary embeddings. With x_l the FT residual stream::

    PTC_l   = pt_block(x_l) - x_l                     (what the PT block would add)
    FTC_l   = ft_block(x_l) - pt_block(x_l)           (what fine-tuning changes)
    x_{l+1} = x_l + PTC_l + alpha * FTC_l             (alpha = 1: the FT forward, untouched)

Nothing else of the model is touched: every block argument is passed through as transformers
gives it, so batching, masks, ``generate()`` and ``device_map`` keep working. The one argument
that is swapped is the KV cache: PT blocks keep their own, so that cached generation is right at
any alpha. Components are accumulated in float32 whatever the model dtype.

Use (``ModelPair`` does this for you)::

    with Decomposition(ft_blocks, pt_blocks, alpha=0.8) as dec:
        rec = dec.record(last_index)           # optional: keep what TuCo needs, [batch] indices
        ft_model(input_ids, attention_mask=mask)
    rec.ptc_sum, rec.ftc_sum                   # [batch, d] sums over blocks at the last token

In PEFT mode the PT block is the FT block itself with its LoRA layers switched off
(``pt_blocks=ft_blocks, pt_context=adapters_off``): one copy of the base weights.

A chain of checkpoints M_0 (PT), M_1, ..., M_K (FT) runs the blocks of M_1..M_{K-1} too
(``stages``), on the same arguments, and splits FTC_l into stage components that telescope::

    C_{k,l} = f_{M_k}(x_l) - f_{M_{k-1}}(x_l),   sum_k C_{k,l} = FTC_l
    x_{l+1} = x_l + PTC_l + sum_k alpha_k C_{k,l}           (alpha = (alpha_1, ..., alpha_K))
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn as nn

from .blocks import hidden, with_hidden
from .errors import Alpha, check_alpha
from .lastpos import last_position_output
from .record import Record
from .sublayers import Sublayers


def _is_cache(value) -> bool:
    return hasattr(value, "get_seq_length") and hasattr(value, "update")


class Decomposition:
    """Context manager: hooks on the FT blocks that run the PT blocks beside them.

    ``ft_blocks[l]`` and ``pt_blocks[l]`` are the l-th decoder blocks of the two models (the same
    modules in PEFT mode). ``pt_context(l)`` is entered around every PT call (PEFT mode: LoRA off).
    ``last_only=True`` (alpha = 1, left-padded batches) runs the PT blocks at the last position only
    (``tuco.lastpos``): what last-token TuCo reads, at a fraction of the cost. With ``later=True``
    too, the pass only keeps each PT block's arguments, and ``run_later()`` runs the PT blocks and
    fills the record after it (a server sends the first token before the prompt's TuCo is known).
    ``components=True`` also splits every block into its attention and MLP sides (``tuco.sublayers``)
    for the record, and ``heads=True`` the attention side per head (``num_heads`` of them, from an
    output projection of ``width``, the residual stream's).
    ``alpha={"attn": a, "mlp": b}`` scales the two sides apart: x + PTC + a FTC^attn + b FTC^mlp.
    ``stages[k - 1][l]``: block l of the chain's intermediate checkpoint M_k (k = 1..K-1), run like
    the PT block (``stage_context(k, l)`` entered around it); the record then keeps each stage's
    component, and ``alpha=(a_1, ..., a_K)`` scales them apart: x + PTC + sum_k a_k C_k.
    ``row_alpha`` ([batch] floats) gives each row its own alpha instead (continuous batching:
    ``tuco.batcher``); rows at alpha = 1 keep the FT block's own output, exactly.
    """

    def __init__(
        self,
        ft_blocks: Sequence[nn.Module] | nn.ModuleList,
        pt_blocks: Sequence[nn.Module] | nn.ModuleList,
        alpha: Alpha = 1.0,
        pt_context: Callable[[int], AbstractContextManager] | None = None,
        last_only: bool = False,
        components: bool = False,
        heads: bool = False,
        num_heads: int | None = None,
        width: int | None = None,
        stages: Sequence[Sequence[nn.Module] | nn.ModuleList] | None = None,
        stage_context: Callable[[int, int], AbstractContextManager] | None = None,
        row_alpha: torch.Tensor | None = None,
        later: bool = False,
    ):
        self.stages = None if stages is None else [list(blocks) for blocks in stages]
        if len(ft_blocks) != len(pt_blocks):
            raise ValueError(f"{len(ft_blocks)} FT blocks but {len(pt_blocks)} PT blocks")
        for k, blocks in enumerate(self.stages or [], start=1):
            if len(blocks) != len(ft_blocks):
                raise ValueError(f"{len(ft_blocks)} FT blocks but {len(blocks)} blocks in stage {k}")
        self.alpha = check_alpha(alpha)
        self.stage_context = stage_context or (lambda k, layer: contextlib.nullcontext())
        n_stages = 1 if self.stages is None else len(self.stages) + 1
        if isinstance(self.alpha, tuple) and len(self.alpha) != n_stages:
            raise ValueError(
                f"alpha per stage takes one number for each of the {n_stages} stage(s) of "
                f"the {'pair' if self.stages is None else 'chain'}, not {len(self.alpha)}"
            )
        if self.stages is not None and (components or heads or isinstance(self.alpha, dict)):
            raise ValueError(
                "A chain does not split its stages into attention and MLP sides: score the pair of two "
                "of its checkpoints (ModelPair) with components=True"
            )
        if last_only and (self.alpha != 1.0 or row_alpha is not None):
            raise ValueError("last_only=True needs alpha = 1: at other alphas the PT blocks feed the stream")
        if row_alpha is not None and (self.alpha != 1.0 or components or heads):
            raise ValueError("row_alpha= gives each row its alpha: leave alpha at 1, without components")
        if later and (not last_only or components or heads or stages):
            raise ValueError(
                "later=True runs the last position's PT blocks after the pass: it needs last_only"
            )
        self.later = later
        # later=True: (layer, PT block args, kwargs, x, FT output) of each block, at the last position
        self._later: list[tuple] = []
        self._later_record: Record | None = None  # ... and the record run_later() fills
        self._row_weight = None if row_alpha is None or bool((row_alpha == 1).all()) else row_alpha.float()
        self.last_only = last_only
        self.ft_blocks, self.pt_blocks = list(ft_blocks), list(pt_blocks)
        self.heads, self.num_heads, self.width = heads, num_heads, width
        self.components = components or heads or isinstance(self.alpha, dict)
        self.sublayers: Sublayers | None = None
        self.pt_context = pt_context or (lambda layer: contextlib.nullcontext())
        self.recording: Record | None = None
        self._handles: list = []
        self._pt_out = None  # output of the PT block whose FT twin is running now
        self._stage_outs: list[torch.Tensor] = []  # and of the chain's intermediate blocks, M_1 first
        self._inside_pt = False  # PEFT mode calls the same module again: its hooks must stand aside
        self._ft_cache = None
        self._caches: dict[int, Any] = {}  # stage k -> its blocks' KV cache (0: the PT blocks')

    def record(
        self,
        last_index: torch.Tensor,
        per_token: bool = False,
        p: float = 1,
        layers: bool = True,
        token_vectors: bool = False,
    ) -> Record:
        """Keep the components of the next forward pass (one: the record closes at its last block)
        at token ``last_index[b]`` of row b. Call it again before each pass to record."""
        if self.last_only and per_token:
            raise ValueError("per_token=True needs every position of the PT blocks: use last_only=False")
        self.recording = Record(last_index, per_token, p, layers, token_vectors)
        return self.recording

    def run_later(self) -> None:
        """``later=True``: run the PT blocks of the recorded pass at its last position now, on the
        arguments they were given in it (the FT blocks' own), and fill its record."""
        kept, self._later = self._later, []
        self._inside_pt = True  # (PEFT mode, inside the context: the FT block's hooks stand aside)
        try:
            for layer, args, kwargs, x, ft_out in kept:
                with self.pt_context(layer):
                    pt_out = last_position_output(self.pt_blocks[layer], args, kwargs, layer)
                if self._later_record is not None:
                    self._later_record.add(x, pt_out.to(x.device), ft_out)
        finally:
            self._inside_pt = False

    def __enter__(self) -> Decomposition:
        if self.components:
            self.sublayers = Sublayers(
                [*self.ft_blocks, *self.pt_blocks],
                side=lambda: "pt" if self._inside_pt else "ft",
                heads=self.heads,
                num_heads=self.num_heads,
                width=self.width,
                last=lambda t: self.recording.last(t) if self.recording is not None else t[:, -1],
            )
        for layer, block in enumerate(self.ft_blocks):
            self._handles.append(block.register_forward_pre_hook(self._run_pt(layer), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._combine(layer), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.sublayers is not None:
            self.sublayers.remove()
            self.sublayers = None
        self._pt_out = self._ft_cache = None
        self._caches, self._stage_outs = {}, []

    def _run_pt(self, layer: int):
        def hook(module, args, kwargs):
            if self._inside_pt:
                return None
            if self.sublayers is not None:
                self.sublayers.reset("pt")
                self.sublayers.reset("ft")
                self.sublayers.want_heads = self.heads and self.recording is not None
            if self.later:  # run_later() runs it, on these arguments
                if self.recording is not None:
                    self._later.append((layer, *self._below_arguments(args, kwargs, 0)))
                return None
            self._inside_pt = True
            try:
                with self.pt_context(layer):
                    self._pt_out = self._run_below(self.pt_blocks[layer], args, kwargs, 0, layer)
                for k, blocks in enumerate(self.stages or [], start=1):
                    with self.stage_context(k, layer):
                        self._stage_outs.append(self._run_below(blocks[layer], args, kwargs, k, layer))
            finally:
                self._inside_pt = False
            return None

        return hook

    def _run_below(self, block: nn.Module, args: tuple, kwargs: dict, stage: int, layer: int) -> torch.Tensor:
        """A block below the FT one (stage 0: the PT block) on the FT block's arguments, with its
        own KV cache: its output hidden states, [b, s, d] (``last_only``: [b, 1, d])."""
        below_args, below_kwargs = self._below_arguments(args, kwargs, stage)
        if self.last_only:
            return last_position_output(block, below_args, below_kwargs, layer)
        return hidden(block(*below_args, **below_kwargs))

    def _below_arguments(self, args: tuple, kwargs: dict, stage: int) -> tuple[tuple, dict]:
        """The FT block's arguments with the KV cache swapped for the one of ``stage``'s blocks."""
        swap = lambda v: self._cache_for(v, stage) if _is_cache(v) else v  # noqa: E731
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}

    def _combine(self, layer: int):
        last = layer == len(self.ft_blocks) - 1

        def hook(module, args, kwargs, output):
            if self._inside_pt:
                return None
            ft_out = hidden(output)
            # sharded models: the block's input may still sit on the previous block's device
            x = (args[0] if args else kwargs["hidden_states"]).to(ft_out.device)
            if self.later:  # alpha = 1: the FT output stays; run_later() records the block
                if self.recording is not None:
                    self._later[-1] = (*self._later[-1], x[:, -1:], ft_out[:, -1:])
                    if last:
                        self._later_record, self.recording = self.recording, None
                return None
            pt_out, self._pt_out = self._pt_out.to(ft_out.device), None
            stage_outs, self._stage_outs = [t.to(ft_out.device) for t in self._stage_outs], []
            parts = heads = None
            if self.sublayers is not None and (self.recording is not None or isinstance(self.alpha, dict)):
                parts, heads = self._split(layer, module, x, pt_out, ft_out)
            if self.recording is not None:
                self.recording.add(
                    x, pt_out, ft_out, parts, heads, stage_outs if self.stages is not None else None
                )
                if last:  # one forward pass recorded: later ones (e.g. decoding steps) add nothing
                    self.recording = None
            if self._row_weight is not None:
                # row b: x + PTC + alpha_b FTC, in float32; rows at alpha 1 keep the FT output itself
                a = self._row_weight.to(ft_out.device).view(-1, *[1] * (ft_out.dim() - 1))
                mixed = torch.lerp(pt_out.float(), ft_out.float(), a).to(ft_out.dtype)
                return with_hidden(output, torch.where(a == 1, ft_out, mixed))
            if self.alpha == 1.0:
                return None  # the FT block's own output: exactly the FT forward
            if isinstance(self.alpha, tuple):
                # x + PTC + sum_k a_k C_k, C_k = f_k - f_{k-1}, in float32
                outs = [t.float() for t in (pt_out, *stage_outs, ft_out)]
                mixed = outs[0].clone()
                for a, below, above in zip(self.alpha, outs, outs[1:], strict=False):
                    mixed += a * (above - below)
                return with_hidden(output, mixed.to(ft_out.dtype))
            if isinstance(self.alpha, dict) and parts is not None:
                # x + PTC + a FTC^attn + b FTC^mlp, in float32
                pt_a, pt_m, ft_a, ft_m = (t.float() for t in parts)
                attn, mlp = self.alpha["attn"], self.alpha["mlp"]
                mixed = (pt_out.float() + attn * (ft_a - pt_a) + mlp * (ft_m - pt_m)).to(ft_out.dtype)
                return with_hidden(output, mixed)
            # x + PTC + alpha * FTC  ==  pt_out + alpha * (ft_out - pt_out), in float32
            mixed = torch.lerp(pt_out.float(), ft_out.float(), float(self.alpha)).to(ft_out.dtype)
            return with_hidden(output, mixed)

        return hook

    def _split(
        self, layer: int, ft_block: nn.Module, x: torch.Tensor, pt_out: torch.Tensor, ft_out: torch.Tensor
    ):
        """(PT attn, PT mlp, FT attn, FT mlp) of block ``layer``, and with heads (PT heads, PT bias,
        FT heads, FT bias) at the last token (``tuco.sublayers``)."""
        assert self.sublayers is not None
        pt_block = self.pt_blocks[layer]
        pt_x = x if pt_out.shape[1] == x.shape[1] else x[:, -1:]
        pt_a, pt_m = self.sublayers.split(pt_block, pt_x, pt_out, "pt", layer)
        ft_a, ft_m = self.sublayers.split(ft_block, x, ft_out, "ft", layer)
        heads = None
        if self.heads and self.recording is not None:
            last = self.recording.last
            heads = (
                *self.sublayers.heads_of(pt_block, last(pt_a).float(), "pt", layer),
                *self.sublayers.heads_of(ft_block, last(ft_a).float(), "ft", layer),
            )
        return (pt_a, pt_m, ft_a, ft_m), heads

    @property
    def caches(self) -> dict[int, Any]:
        """The KV caches of the blocks below the FT ones, by stage (0: the PT blocks'), twins of
        the FT cache the last pass ran with."""
        return self._caches

    def use_caches(self, ft_cache: Any, caches: dict[int, Any]) -> None:
        """Go on from ``caches`` (an earlier ``caches``, rows joined or dropped as the FT cache's
        were) for the passes that run with ``ft_cache``: continuous batching's decoding steps."""
        self._ft_cache, self._caches = ft_cache, caches

    def _cache_for(self, ft_cache, stage: int = 0):
        """The KV cache of the blocks below the FT ones (stage 0: the PT blocks'), twin of the FT
        cache that transformers passes to the blocks."""
        if ft_cache is not self._ft_cache:
            if ft_cache.get_seq_length() != 0:
                raise RuntimeError(
                    "The FT model was given a KV cache that already holds tokens; the PT blocks' cache "
                    "for them cannot be rebuilt. Start generation inside the tuco context with a fresh cache."
                )
            self._ft_cache, self._caches = ft_cache, {}
        if stage not in self._caches:
            # Seen at block 0 before the FT block writes to it: an empty cache of the same kind and shape.
            self._caches[stage] = copy.deepcopy(ft_cache)
        return self._caches[stage]


def pt_blocks_needed(alpha: Alpha, reads: str) -> str:
    """Which PT blocks a forward pass runs, by the one rule: at alpha = 1 they never feed the
    stream, so a pass that reads no components needs none (``"none"``: the FT model alone), and one
    that reads them at the last token alone needs them there alone (``"last"``: ``tuco.lastpos``);
    otherwise they run on every position (``"all"``). ``reads``: ``"nothing"``, ``"last"``, or
    ``"all"`` (components at every position, or PT caches kept for the decoding steps after)."""
    if reads not in ("nothing", "last", "all"):
        raise ValueError(f"reads must be nothing, last or all, not {reads!r}")
    if alpha != 1.0 or reads == "all":
        return "all"
    return "none" if reads == "nothing" else "last"


@contextlib.contextmanager
def adapters_off(module: nn.Module):
    """Switch off the PEFT adapter layers inside ``module`` (the PT side in PEFT mode).

    Flips the flag that LoRA layers read in ``forward``; unlike ``enable_adapters`` it leaves the
    adapters' ``requires_grad`` alone and touches only the layers of this one module.
    """
    layers: list[Any] = [
        m for m in module.modules() if hasattr(m, "_disable_adapters") and hasattr(m, "base_layer")
    ]
    before = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, was in zip(layers, before, strict=True):
            m._disable_adapters = was


def lora_layers(module: nn.Module) -> list[Any]:
    """The PEFT LoRA layers inside ``module``."""
    return [m for m in module.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def _lora_delta(layer: Any, x: torch.Tensor) -> torch.Tensor | None:
    """What the active (or merged) LoRA adapters of ``layer`` add to its output at input ``x``."""
    names = layer.merged_adapters if layer.merged else [a for a in layer.active_adapters if a in layer.lora_A]
    delta = None
    for name in names:
        a = layer._cast_input_dtype(x, layer.lora_A[name].weight.dtype)
        term = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](a))) * layer.scaling[name]
        delta = term if delta is None else delta + term
    return delta


@contextlib.contextmanager
def adapters_subtracted(module: nn.Module, layers: Sequence[Any] | None = None):
    """The PT side of ``module`` when its LoRA adapters are merged into the base weights
    (``PairBase.merge_adapter``): every LoRA layer's output less what its adapters add,
    (W + sBA) x - sB(Ax) = Wx (in float32, to rounding). Right merged or not; a layer whose
    ``forward`` was replaced for the moment (``tuco.lastpos``' capture run) is left alone.
    ``layers``: its LoRA layers, when known (``lora_layers(module)``, found once)."""

    def hook(layer, args, output):
        if "forward" in layer.__dict__ or layer.disable_adapters:
            return None
        delta = _lora_delta(layer, args[0])
        return output if delta is None else output - delta.to(output.dtype)

    if layers is None:
        layers = lora_layers(module)
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def adapters_only(module: nn.Module, names: Sequence[str]):
    """Within the block, the PEFT adapter layers inside ``module`` apply the adapters ``names`` alone
    (none: the base), stacked: a chain's intermediate checkpoint in PEFT mode, base + its first
    adapters. Like ``adapters_off`` it touches no ``requires_grad`` and only this module's layers."""
    layers: list[Any] = [
        m for m in module.modules() if hasattr(m, "_active_adapter") and hasattr(m, "base_layer")
    ]
    before = [(m._active_adapter, m._disable_adapters) for m in layers]
    for m in layers:
        m._active_adapter, m._disable_adapters = list(names), not names
    try:
        yield
    finally:
        for m, (active, disabled) in zip(layers, before, strict=True):
            m._active_adapter, m._disable_adapters = active, disabled
