"""What one forward pass of a ``Decomposition`` leaves behind: ``Record``, float32, at each row's
last token (the sums, per-block norms and running sums TuCo needs; with ``per_token``, sums at every
position; with the sublayers, each block's attention and MLP sides and per-head norms).

    >>> rec = dec.record(last_index)      # [batch] indices; the next forward pass fills it
    >>> rec.sums(), rec.ftc_layers        # ([batch, d], [batch, d]), [batch, L]
"""

from __future__ import annotations

import torch


class Record:
    """What one forward pass leaves behind, float32, for the token at ``last_index`` of each row.

    - ``ptc_sum``, ``ftc_sum``: [batch, d], sum over blocks of PTC_l and FTC_l (P and F of the paper)
    - ``ptc_layers``, ``ftc_layers``: [batch, L], norm of PTC_l and FTC_l
    - ``ptc_cum``, ``ftc_cum``: [batch, L], norm of the running sums up to block l (for beta_l)
    - ``ptc_tokens``, ``ftc_tokens``: [batch, seq, d], sums over blocks at every position
      (only with ``per_token=True``)

    Norms are L``p`` norms over d (``p=1``: the paper's TuCo; ``p=2``: the L2 variant).
    ``layers=False`` keeps the sums only (no per-block norms: generation's per-token TuCo).
    Each block's [batch, d] components are kept and reduced once, when first read.

    With the sublayers (``add(..., parts=...)``, ``tuco.sublayers``), also per block the attention
    and MLP sides of each: ``sublayer_layers()`` -> {"ptc_attn": [batch, L], ...}, ``sublayer_sums()``
    -> {"ptc_attn": [batch, d], ...}, ``sum_check`` [batch] (the largest relative L1 error of
    attn + mlp against the block's own PTC/FTC, and of the heads against the attention side), and
    with heads ``heads`` -> {"ptc_heads": [batch, L, H], "ftc_heads", "ptc_bias": [batch, L], "ftc_bias"}.

    With a chain's stages (``add(..., stages=...)``, ``tuco.chain``), also each block's stage
    components C_{k,l} = f_{M_k}(x_l) - f_{M_{k-1}}(x_l): ``stage_sums()`` [K, batch, d],
    ``stage_layers`` [batch, K, L] norms, and with ``per_token`` ``stage_tokens`` [K, batch, seq, d].
    """

    def __init__(
        self,
        last_index: torch.Tensor,
        per_token: bool = False,
        p: float = 1,
        layers: bool = True,
        token_vectors: bool = False,
    ):
        self.last_index = last_index
        self.token_vectors = token_vectors and per_token  # keep every block's [batch, seq, d] too
        self.per_token = per_token
        self.p = p
        self.layers = layers
        self.ptc_tokens: torch.Tensor | None = None
        self.ftc_tokens: torch.Tensor | None = None
        self._blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # (PTC_l, FTC_l), [batch, d]
        self._stacked: tuple[torch.Tensor, torch.Tensor] | None = None  # [L, batch, d] each
        self._device: torch.device | None = None  # the first block's: it holds what is kept
        self._parts: list[tuple[torch.Tensor, ...]] = []  # (PTC attn, FTC attn, PTC mlp, FTC mlp)
        self._heads: list[tuple[torch.Tensor, ...]] = []  # norms: (PTC heads, FTC heads, PTC bias, FTC bias)
        self._errors: list[torch.Tensor] = []  # [batch] sum check of each block
        self.part_tokens: dict[str, torch.Tensor] = {}  # per_token: "ptc_attn" ... -> [batch, seq, d]
        self._token_blocks: list[tuple[torch.Tensor, torch.Tensor]] = []  # token_vectors: [batch, seq, d]
        self._stage_blocks: list[torch.Tensor] = []  # chains: C_{k,l} of each block, [K, batch, d]
        self.stage_tokens: torch.Tensor | None = None  # chains, per_token: [K, batch, seq, d] sums

    def last(self, t: torch.Tensor) -> torch.Tensor:
        """Each row's token at ``last_index`` of a [batch, seq, ...] tensor: [batch, ...]
        (a [batch, 1, ...] one is the last position of a left-padded batch)."""
        if t.shape[1] == 1:
            return t[:, -1]
        rows = torch.arange(t.shape[0], device=t.device)
        return t[rows, self.last_index.to(t.device)]

    def add(
        self,
        x: torch.Tensor,
        pt_out: torch.Tensor,
        ft_out: torch.Tensor,
        parts: tuple[torch.Tensor, ...] | None = None,
        heads: tuple[torch.Tensor, ...] | None = None,
        stages: list[torch.Tensor] | None = None,
    ) -> None:
        """Account for one block: x, pt_out, ft_out are [batch, seq, d] on the block's device
        (pt_out may be [batch, 1, d]: the last position only, of a left-padded batch).
        ``parts``: (PT attn, PT mlp, FT attn, FT mlp) sides, shaped like pt_out, pt_out, ft_out,
        ft_out; ``heads``: (PT heads [batch, H, d], PT bias [batch, d], FT heads, FT bias) at the
        last token; ``stages``: a chain's intermediate blocks' outputs f_{M_1} .. f_{M_{K-1}},
        shaped like pt_out."""
        # left-padded, PT blocks at the last position only: every row's last token sits at -1
        take = self.last if pt_out.shape[1] == x.shape[1] else (lambda t: t[:, -1])
        x_last, ft_last, pt_last = take(x).float(), take(ft_out).float(), take(pt_out).float()
        if self._device is None:
            self._device = x.device
        ptc, ftc = pt_last - x_last, ft_last - pt_last
        self._blocks.append((ptc.to(self._device), ftc.to(self._device)))
        self._stacked = None
        if stages is not None:
            self._add_stages(take, pt_out, ft_out, stages, pt_last, ft_last)
        if parts is not None:
            pt_a, pt_m, ft_a, ft_m = (self.last(t).float() for t in parts)
            sides = (pt_a, ft_a - pt_a, pt_m, ft_m - pt_m)
            self._parts.append(tuple(t.to(self._device) for t in sides))
            errors = [_relative_l1(sides[0] + sides[2], ptc), _relative_l1(sides[1] + sides[3], ftc)]
            if heads is not None:
                pt_h, pt_b, ft_h, ft_b = (t.float() for t in heads)
                errors += [_relative_l1(pt_h.sum(1) + pt_b, pt_a), _relative_l1(ft_h.sum(1) + ft_b, ft_a)]
                norms = (pt_h, ft_h - pt_h, pt_b, ft_b - pt_b)
                self._heads.append(
                    tuple(torch.linalg.vector_norm(t, self.p, dim=-1).to(self._device) for t in norms)
                )
            self._errors.append(torch.stack(errors).amax(0).to(self._device))
            if self.per_token:
                self._add_part_tokens(parts)
        if self.per_token:
            ptc_t = pt_out.float() - x.float()
            ftc_t = ft_out.float() - pt_out.float()
            if self.token_vectors:
                self._token_blocks.append((ptc_t.to(self._device), ftc_t.to(self._device)))
            if self.ptc_tokens is None or self.ftc_tokens is None:  # copies: the sums grow in place
                self.ptc_tokens, self.ftc_tokens = ptc_t.clone(), ftc_t.clone()
            else:
                self.ptc_tokens += ptc_t.to(self.ptc_tokens.device)
                self.ftc_tokens += ftc_t.to(self.ftc_tokens.device)

    def _add_stages(self, take, pt_out, ft_out, stages, pt_last, ft_last) -> None:
        """C_{k,l} = f_k - f_{k-1} at the last token (``take``: add's choice of it), and summed at
        every token; f_0 = pt_out, f_K = ft_out."""
        lasts = [pt_last, *(take(t).float() for t in stages), ft_last]
        steps = [hi - lo for lo, hi in zip(lasts, lasts[1:], strict=False)]
        self._stage_blocks.append(torch.stack(steps).to(self._device))
        if self.per_token:
            outs = [t.float() for t in (pt_out, *stages, ft_out)]
            comps = torch.stack([hi - lo for lo, hi in zip(outs, outs[1:], strict=False)])  # [K, b, seq, d]
            if self.stage_tokens is None:
                self.stage_tokens = comps
            else:
                self.stage_tokens += comps.to(self.stage_tokens.device)

    @property
    def has_stages(self) -> bool:
        return bool(self._stage_blocks)  # a chain's record (one stage or more)

    def stage_sums(self) -> torch.Tensor:
        """[K, batch, d]: each stage's components summed over blocks."""
        return torch.stack(self._stage_blocks).sum(0)

    @property
    def stage_layers(self) -> torch.Tensor:
        """[batch, K, L]: the norm of each stage's component at each block."""
        norms = torch.linalg.vector_norm(torch.stack(self._stage_blocks), self.p, dim=-1)  # [L, K, batch]
        return norms.permute(2, 1, 0)

    def _add_part_tokens(self, parts: tuple[torch.Tensor, ...]) -> None:
        pt_a, pt_m, ft_a, ft_m = (t.float() for t in parts)
        for name, t in (
            ("ptc_attn", pt_a),
            ("ftc_attn", ft_a - pt_a),
            ("ptc_mlp", pt_m),
            ("ftc_mlp", ft_m - pt_m),
        ):
            if name in self.part_tokens:
                self.part_tokens[name] += t.to(self.part_tokens[name].device)
            else:  # a copy: the sum grows in place, and t may be the block's own tensor
                self.part_tokens[name] = t.clone()

    @property
    def has_parts(self) -> bool:
        return bool(self._parts)

    @property
    def has_heads(self) -> bool:
        return bool(self._heads)

    def sublayer_sums(self) -> dict[str, torch.Tensor]:
        """Sums over blocks of each side: {"ptc_attn", "ftc_attn", "ptc_mlp", "ftc_mlp"} -> [batch, d]."""
        return {name: torch.stack([p[i] for p in self._parts]).sum(0) for i, name in enumerate(_PARTS)}

    def sublayer_layers(self) -> dict[str, torch.Tensor]:
        """Norms of each side per block: {"ptc_attn", ...} -> [batch, L]."""
        return {
            name: torch.linalg.vector_norm(torch.stack([p[i] for p in self._parts]), self.p, dim=-1).T
            for i, name in enumerate(_PARTS)
        }

    @property
    def sum_check(self) -> torch.Tensor:
        """[batch]: the largest relative L1 error over blocks of the split (0 would be exact)."""
        return torch.stack(self._errors).amax(0)

    @property
    def heads(self) -> dict[str, torch.Tensor]:
        names = ("ptc_heads", "ftc_heads", "ptc_bias", "ftc_bias")
        return {name: torch.stack([h[i] for h in self._heads], dim=1) for i, name in enumerate(names)}

    def vectors(self, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each row's (PTC, FTC) vectors per block, [rows, L, d] on the CPU: rows = 1 (the last
        token), or one per real token with ``token_vectors``."""
        if self.token_vectors:
            ptc = torch.stack([t for t, _ in self._token_blocks], dim=2).cpu()  # [batch, seq, L, d]
            ftc = torch.stack([t for _, t in self._token_blocks], dim=2).cpu()
            mask = attention_mask.bool().cpu()
            return [(ptc[i][mask[i]], ftc[i][mask[i]]) for i in range(len(mask))]
        ptc, ftc = (t.transpose(0, 1).cpu() for t in self._components())  # [batch, L, d]
        return [(ptc[i][None], ftc[i][None]) for i in range(ptc.shape[0])]

    def _components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PTC_l and FTC_l of every block so far, [L, batch, d] each."""
        if not self._blocks:
            raise ValueError("the record holds no forward pass: run the model inside the recording context")
        if self._stacked is None:
            self._stacked = (
                torch.stack([ptc for ptc, _ in self._blocks]),
                torch.stack([ftc for _, ftc in self._blocks]),
            )
        return self._stacked

    @property
    def ptc_sum(self) -> torch.Tensor:
        return self._components()[0].sum(0)

    @property
    def ftc_sum(self) -> torch.Tensor:
        return self._components()[1].sum(0)

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(``ptc_sum``, ``ftc_sum``) of the pass recorded, [batch, d] each."""
        ptc, ftc = self._components()
        return ptc.sum(0), ftc.sum(0)

    def _norms(self, which: int, cumulative: bool) -> torch.Tensor:
        assert self.layers, "recorded with layers=False: sums only"
        c = self._components()[which]
        if cumulative:
            c = c.cumsum(0)
        return torch.linalg.vector_norm(c, self.p, dim=-1).T  # [batch, L]

    @property
    def ptc_layers(self) -> torch.Tensor:
        return self._norms(0, cumulative=False)

    @property
    def ftc_layers(self) -> torch.Tensor:
        return self._norms(1, cumulative=False)

    @property
    def ptc_cum(self) -> torch.Tensor:
        return self._norms(0, cumulative=True)

    @property
    def ftc_cum(self) -> torch.Tensor:
        return self._norms(1, cumulative=True)


_PARTS = ("ptc_attn", "ftc_attn", "ptc_mlp", "ftc_mlp")


def _relative_l1(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """[batch]: |approx - exact|_1 / |exact|_1 over the last dimension."""
    return (approx - exact).abs().sum(-1) / exact.abs().sum(-1).clamp_min(1e-30)
