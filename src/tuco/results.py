"""Per-prompt results: what ``ModelPair.score`` and ``ModelPair.output_contribution`` return."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import metrics
from .record import Record


@dataclass
class TucoResult:
    """TuCo of one prompt, at its last real token (the TuCo paper, Nuti et al., ICML 2025).

    - ``tuco``: ||F|| / (||P|| + ||F||), F and P the sums over blocks of FTC_l and PTC_l
    - ``ptc_norm``, ``ftc_norm``: ||P|| and ||F||
    - ``ptc_layers``, ``ftc_layers``: ||PTC_l|| and ||FTC_l||, one float per block
    - ``beta``: the cumulative ratio beta_l, TuCo of the sums up to block l (``beta[-1] == tuco``)
    - ``norm``: "l1" (the paper's definition) or "l2" (the L2 variant), for every norm above
    - ``tuco_tokens``: TuCo at every real token of the prompt (``score(per_token=True)``)

    With ``score(components=True)`` (``tuco.sublayers``; None otherwise):

    - ``ptc_attn_layers``, ``ftc_attn_layers``, ``ptc_mlp_layers``, ``ftc_mlp_layers``: the norms of
      each block's attention and MLP sides of PTC_l and FTC_l
    - ``tuco_attn``, ``tuco_mlp``: TuCo of each side alone, the formula on that side's sums
    - ``sum_check``: the largest relative L1 error over blocks of attn + mlp against the block's
      PTC_l and FTC_l (and of the heads against the attention side): ~1e-7 in float32
    - ``tuco_attn_tokens``, ``tuco_mlp_tokens``: with ``per_token``, at every real token
    - ``ptc_heads``, ``ftc_heads``: with ``heads=True``, [L][H] norms per block and head;
      ``ptc_head_bias``, ``ftc_head_bias``: [L], the output projection's bias part

    From a chain of checkpoints (``tuco.chain.ModelChain``; None otherwise), where ``tuco`` and the
    FTC fields are those of the whole chain (M_0 vs M_K) and C_{k,l} is stage k's part of FTC_l:

    - ``stage_tuco``: [K], stage k's share ||C_k|| / (||P|| + sum_j ||C_j||), C_k = sum_l C_{k,l}
    - ``stage_norms``: [K], ||C_k||; ``stage_layers``: [K][L], ||C_{k,l}||
    - ``stage_tuco_tokens``: [K][n_tokens], the shares at every real token (``per_token``)
    """

    tuco: float
    ptc_norm: float
    ftc_norm: float
    ptc_layers: list[float]
    ftc_layers: list[float]
    beta: list[float]
    n_tokens: int
    norm: str = "l1"
    tuco_tokens: list[float] | None = None
    ptc_attn_layers: list[float] | None = None
    ftc_attn_layers: list[float] | None = None
    ptc_mlp_layers: list[float] | None = None
    ftc_mlp_layers: list[float] | None = None
    tuco_attn: float | None = None
    tuco_mlp: float | None = None
    sum_check: float | None = None
    tuco_attn_tokens: list[float] | None = None
    tuco_mlp_tokens: list[float] | None = None
    ptc_heads: list[list[float]] | None = None
    ftc_heads: list[list[float]] | None = None
    ptc_head_bias: list[float] | None = None
    ftc_head_bias: list[float] | None = None
    stage_tuco: list[float] | None = None
    stage_norms: list[float] | None = None
    stage_layers: list[list[float]] | None = None
    stage_tuco_tokens: list[list[float]] | None = None
    vectors: tuple[torch.Tensor, torch.Tensor] | None = dataclasses.field(
        default=None, repr=False, compare=False, metadata={"tensor": True}
    )  # score(vectors=True): (PTC, FTC) per block, [rows, L, d] each (not in to_dict)

    @property
    def preco(self) -> float:
        return 1.0 - self.tuco

    def to_dict(self) -> dict:
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("tensor")
        }


@dataclass
class OutputContribution:
    """Output-only baselines of one prompt at its last real token (OutputCo is the paper's; KL is
    tuco's addition).

    - ``outputco``: ||x_FT - x_PT||_1 / (||x_PT||_1 + ||x_FT - x_PT||_1), x the final residual
      streams (before the final norm) of each model's OWN forward pass
    - ``kl``: KL(p_FT || p_PT) of the next-token distributions, in nats
    - ``distance``: ||x_FT - x_PT||_1, the final-state distance (OutputCo's numerator)
    """

    outputco: float
    kl: float
    distance: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def from_record(rec: Record, attention_mask: torch.Tensor, vectors: bool = False) -> list[TucoResult]:
    """One ``TucoResult`` per row of a recorded batch (one host transfer per batch)."""
    ptc, ftc = rec.sums()
    columns = {
        "tuco": metrics.tuco(ptc, ftc, rec.p),
        "ptc_norm": torch.linalg.vector_norm(ptc, rec.p, dim=-1),
        "ftc_norm": torch.linalg.vector_norm(ftc, rec.p, dim=-1),
        "ptc_layers": rec.ptc_layers,
        "ftc_layers": rec.ftc_layers,
        "beta": metrics.ratio(rec.ftc_cum, rec.ptc_cum),
    }
    token_columns = {}
    if rec.ptc_tokens is not None and rec.ftc_tokens is not None:  # per_token=True
        token_columns["tuco_tokens"] = metrics.tuco(rec.ptc_tokens, rec.ftc_tokens, rec.p)  # [batch, seq]
    if rec.has_parts:
        columns |= _sublayer_columns(rec)
        if rec.part_tokens:
            t = rec.part_tokens
            token_columns["tuco_attn_tokens"] = metrics.tuco(t["ptc_attn"], t["ftc_attn"], rec.p)
            token_columns["tuco_mlp_tokens"] = metrics.tuco(t["ptc_mlp"], t["ftc_mlp"], rec.p)
    stage_tokens = None
    if rec.has_stages:
        columns |= _stage_columns(rec, ptc)
        if rec.stage_tokens is not None and rec.ptc_tokens is not None:
            stage_tokens = (
                metrics.stage_shares(rec.stage_tokens, rec.ptc_tokens, rec.p).transpose(0, 1).cpu()
            )  # [b, K, seq]
    columns = {k: v.cpu().tolist() for k, v in columns.items()}
    mask = attention_mask.bool().cpu()
    tokens = {k: v.cpu() for k, v in token_columns.items()}
    rows: list[dict] = [
        {k: v[i] for k, v in columns.items()} | {k: v[i][mask[i]].tolist() for k, v in tokens.items()}
        for i in range(len(mask))
    ]
    if stage_tokens is not None:
        for i, row in enumerate(rows):
            row["stage_tuco_tokens"] = stage_tokens[i][:, mask[i]].tolist()
    results = [
        TucoResult(**row, n_tokens=int(mask[i].sum()), norm=f"l{rec.p:g}") for i, row in enumerate(rows)
    ]
    if vectors:
        for result, pair in zip(results, rec.vectors(attention_mask), strict=True):
            result.vectors = pair
    return results


def _stage_columns(rec: Record, ptc_sum: torch.Tensor) -> dict[str, torch.Tensor]:
    sums = rec.stage_sums()  # [K, batch, d]
    return {
        "stage_tuco": metrics.stage_shares(sums, ptc_sum, rec.p).T,
        "stage_norms": torch.linalg.vector_norm(sums, rec.p, dim=-1).T,
        "stage_layers": rec.stage_layers,
    }


def _sublayer_columns(rec: Record) -> dict[str, torch.Tensor]:
    sums, layers = rec.sublayer_sums(), rec.sublayer_layers()
    columns = {f"{name}_layers": v for name, v in layers.items()}
    columns["tuco_attn"] = metrics.tuco(sums["ptc_attn"], sums["ftc_attn"], rec.p)
    columns["tuco_mlp"] = metrics.tuco(sums["ptc_mlp"], sums["ftc_mlp"], rec.p)
    columns["sum_check"] = rec.sum_check
    if rec.has_heads:
        heads = rec.heads
        columns |= {
            "ptc_heads": heads["ptc_heads"],
            "ftc_heads": heads["ftc_heads"],
            "ptc_head_bias": heads["ptc_bias"],
            "ftc_head_bias": heads["ftc_bias"],
        }
    return columns
