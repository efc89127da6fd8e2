"""Output-only baselines of the paper: OutputCo and KL(p_FT || p_PT) at the last prompt token, each
model on its own forward pass (no decomposition). ``ModelPair.output_contribution`` runs them.

    >>> pair.output_contribution(["Hello!"])[0].outputco
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn

from . import metrics
from .blocks import embedding_weight, hidden
from .pair_base import PairBase
from .results import OutputContribution


def output_contribution_of(pair: PairBase) -> Callable[[dict[str, torch.Tensor]], list[OutputContribution]]:
    """For a pair: a function of a left-padded batch that returns one ``OutputContribution``
    per row. KL is taken over the vocabulary both models share (the first min(V_PT, V_FT) ids)."""
    pt_model = pair.pt_model
    pt_vocab = embedding_weight(pt_model).shape[0]

    def compute(batch: dict[str, torch.Tensor]) -> list[OutputContribution]:
        if int(batch["input_ids"].max()) >= pt_vocab:
            raise ValueError(
                f"A prompt holds token ids >= {pt_vocab}, the pretrained vocabulary size (tokens added "
                "by fine-tuning): the pretrained model cannot run on it for OutputCo."
            )
        x_ft, logits_ft = last_stream(pair.finetuned, pair.ft_blocks, batch)
        with pair.pt_side(pair.finetuned) if pair.adapter_mode else contextlib.nullcontext():
            x_pt, logits_pt = last_stream(pt_model, pair.pt_blocks, batch)
        vocab = min(logits_ft.shape[-1], logits_pt.shape[-1])
        x_pt = x_pt.to(x_ft.device)
        outputco = metrics.output_contribution(x_pt, x_ft).cpu().tolist()
        distance = (x_ft - x_pt).abs().sum(-1).cpu().tolist()
        kl = metrics.kl_divergence(logits_ft[..., :vocab], logits_pt[..., :vocab].to(logits_ft.device))
        return [
            OutputContribution(outputco=o, kl=k, distance=d)
            for o, k, d in zip(outputco, kl.cpu().tolist(), distance, strict=True)
        ]

    return compute


def last_stream(model: nn.Module, blocks: nn.ModuleList, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw final residual stream [batch, d] (last block output, before the final norm) and logits
    [batch, vocab] at the last position of a left-padded batch, from the model's own forward."""
    seen = {}

    def grab(module, args, output):
        seen["x"] = hidden(output)[:, -1]

    handle = blocks[-1].register_forward_hook(grab)
    try:
        device = embedding_weight(model).device
        logits = model(
            **{k: v.to(device) for k, v in batch.items()}, use_cache=False, logits_to_keep=1
        ).logits
    finally:
        handle.remove()
    return seen["x"].float(), logits[:, -1].float()
