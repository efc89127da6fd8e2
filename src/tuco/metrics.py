"""The ratios of the TuCo paper (Nuti et al., ICML 2025, arXiv 2506.23423), on float32 tensors.

``ratio(part, rest)`` is ||part|| / (||rest|| + ||part||), the shape shared by TuCo
(part = F, rest = P), the cumulative curve beta_l and OutputCo (part = x_FT - x_PT, rest = x_PT).
"""

from __future__ import annotations

import torch


def ratio(part_norm: torch.Tensor, rest_norm: torch.Tensor) -> torch.Tensor:
    """part / (rest + part), elementwise; 0 where both are 0 (no update at all); NaN stays NaN."""
    total = rest_norm + part_norm
    return torch.where(total == 0, 0.0, part_norm / torch.where(total == 0, 1.0, total))


def tuco(ptc_sum: torch.Tensor, ftc_sum: torch.Tensor, p: float = 1) -> torch.Tensor:
    """TuCo = ||F||_p / (||P||_p + ||F||_p) for P, F: [..., d] sums over blocks. Returns [...]."""
    return ratio(torch.linalg.vector_norm(ftc_sum, p, dim=-1), torch.linalg.vector_norm(ptc_sum, p, dim=-1))


def stage_shares(stage_sums: torch.Tensor, ptc_sum: torch.Tensor, p: float = 1) -> torch.Tensor:
    """Each training stage's share of a chain's contributions (``tuco.chain``), [K, ...]:
    ||C_k|| / (||P|| + sum_j ||C_j||), from ``stage_sums`` [K, ..., d] and ``ptc_sum`` [..., d];
    with one stage, TuCo itself."""
    norms = torch.linalg.vector_norm(stage_sums, p, dim=-1)
    return ratio(norms, torch.linalg.vector_norm(ptc_sum, p, dim=-1) + norms.sum(0) - norms)


def output_contribution(x_pt: torch.Tensor, x_ft: torch.Tensor) -> torch.Tensor:
    """OutputCo = ||x_FT - x_PT||_1 / (||x_PT||_1 + ||x_FT - x_PT||_1); x: [..., d] final streams."""
    x_pt, x_ft = x_pt.float(), x_ft.float()
    return ratio((x_ft - x_pt).abs().sum(-1), x_pt.abs().sum(-1))


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats from logits [..., vocab] over the same vocabulary. Returns [...]."""
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)
