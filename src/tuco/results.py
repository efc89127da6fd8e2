"""Per-prompt results: what ``ModelPair.score`` and ``ModelPair.output_contribution`` return."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import metrics
from .decompose import Record


@dataclass
class TucoResult:
    """TuCo of one prompt, at its last real token (the TuCo paper, Nuti et al., ICML 2025).

    - ``tuco``: ||F|| / (||P|| + ||F||), F and P the sums over blocks of FTC_l and PTC_l
    - ``ptc_norm``, ``ftc_norm``: ||P|| and ||F||
    - ``ptc_layers``, ``ftc_layers``: ||PTC_l|| and ||FTC_l||, one float per block
    - ``beta``: the cumulative ratio beta_l, TuCo of the sums up to block l (``beta[-1] == tuco``)
    - ``norm``: "l1" (the paper's definition) or "l2" (the L2 variant), for every norm above
    - ``tuco_tokens``: TuCo at every real token of the prompt (``score(per_token=True)``)
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

    @property
    def preco(self) -> float:
        return 1.0 - self.tuco

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def from_record(rec: Record, attention_mask: torch.Tensor) -> list[TucoResult]:
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
    columns = {k: v.cpu().tolist() for k, v in columns.items()}
    mask = attention_mask.bool().cpu()
    tokens = None
    if rec.ptc_tokens is not None and rec.ftc_tokens is not None:  # per_token=True
        tokens = metrics.tuco(rec.ptc_tokens, rec.ftc_tokens, rec.p).cpu()  # [batch, seq]
    return [
        TucoResult(
            **{k: v[i] for k, v in columns.items()},
            n_tokens=int(mask[i].sum()),
            norm=f"l{rec.p:g}",
            tuco_tokens=None if tokens is None else tokens[i][mask[i]].tolist(),
        )
        for i in range(len(mask))
    ]
