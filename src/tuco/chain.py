"""``ModelChain``: TuCo along a chain of training stages, M_0 (pre-trained) -> M_1 -> ... -> M_K.

Fine-tunes come in stages (base -> SFT -> DPO -> RL; adapters stacked on adapters). While M_K runs
its forward pass, every block l of every earlier checkpoint runs on the same stream x_l, and stage
k's component of block l is::

    C_{k,l} = f_{M_k}(x_l) - f_{M_{k-1}}(x_l),      sum_k C_{k,l} = f_{M_K}(x_l) - f_{M_0}(x_l) = FTC_l

so the stages split the FTC of the pair (M_0, M_K) exactly: a chain's ``tuco`` is that pair's, and
``stage_tuco[k]`` is stage k's share ||C_k||_1 / (||P||_1 + sum_j ||C_j||_1) (C_k, P: sums over
blocks at the last token). Generation takes one alpha per stage, x + PTC + sum_k alpha_k C_k: all
ones is M_K, and (1, ..., 1, 0, ..., 0) with j ones is M_j where the stages differ in their blocks
only (not in embeddings or unembedding, which are M_K's).

    >>> chain = ModelChain([base, sft, dpo], tokenizer)                         # models in memory
    >>> chain = ModelChain.from_pretrained(["base", "sft", "dpo"], dtype="auto")
    >>> chain = ModelChain.from_pretrained(["base"], adapters=["sft-lora", "style-lora"])  # stacked
    >>> r = chain.score(["Hello!"])[0]
    >>> r.tuco, r.stage_tuco, r.stage_layers     # the pair (base, dpo)'s TuCo; [K]; [K][L]
    >>> chain.generate("Hi", alpha=[1, 0])       # SFT's blocks alone on top of the base
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from . import compat, inputs
from .blocks import find_blocks, unwrap
from .decompose import adapters_only
from .loading import load_chain
from .pair import ModelPair


class ModelChain(ModelPair):
    """Checkpoints M_0 (pre-trained) .. M_K (final) with one tokenizer: a ``ModelPair`` of M_0 and
    M_K whose results also split the FTC by stage (``stage_tuco``, ``stage_norms``,
    ``stage_layers``; ``tuco.results.TucoResult``).

    ``ModelChain(models, tokenizer)``: full models in memory, M_0 first (each neighbour pair checked
    like a ``ModelPair``). ``ModelChain([peft_model], tokenizer, adapters=[name_1, ..., name_K])``:
    one PEFT model holding K adapters, stacked: M_k is the base with the first k active (M_0 the base,
    M_K all of them, as the model runs outside tuco). ``steer`` is the pair's, with the stages'
    blocks beside the PT ones. Components and heads are a pair's (``ModelPair``); everything else of
    ``ModelPair`` works, with alpha one number (every stage alike) or one per stage."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        tokenizer: Any = None,
        *,
        adapters: Sequence[str] | None = None,
        block_path: str | None = None,
        prompt_format: inputs.ChatFormat | None = None,
        dtype_reason: str = "as given",
    ):
        models = list(models)
        self.adapter_names: list[str] | None = None
        if adapters is not None:
            if len(models) != 1:
                raise ValueError(
                    f"With adapters, give one PEFT model holding them all, not {len(models)} models."
                )
            self.adapter_names = list(adapters)
            _check_adapters(models[0], self.adapter_names)
            super().__init__(
                finetuned=models[0],
                tokenizer=tokenizer,
                block_path=block_path,
                prompt_format=prompt_format,
                dtype_reason=dtype_reason,
            )
            # M_K: every adapter active, stacked, as the model runs outside tuco's hooks too
            peft_model: Any = models[0]
            peft_model.base_model.set_adapter(self.adapter_names, inference_mode=True)
            self.stage_blocks = [self.ft_blocks] * (len(self.adapter_names) - 1)
            self.stage_context = self._stage_context
        else:
            if len(models) < 2:
                raise ValueError(f"A chain needs at least two models (M_0 and M_1), not {len(models)}.")
            for k in range(1, len(models) - 1):  # (M_0, M_K) is checked as a pair below
                compat.check_configs(unwrap(models[k - 1]).config, unwrap(models[k]).config)
            super().__init__(
                pretrained=models[0],
                finetuned=models[-1],
                tokenizer=tokenizer,
                block_path=block_path,
                prompt_format=prompt_format,
                dtype_reason=dtype_reason,
            )
            self.stage_blocks = [find_blocks(m, block_path) for m in models[1:-1]]
            for blocks, model in zip(self.stage_blocks, models[1:-1], strict=True):
                compat.check_models(model, models[-1], blocks, self.ft_blocks)
        self.models = models

    @property
    def num_stages(self) -> int:
        """K: the stages after the pre-trained model."""
        assert self.stage_blocks is not None
        return len(self.stage_blocks) + 1

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        checkpoints: Sequence[str] | str,
        *,
        adapters: Sequence[str] | None = None,
        block_path: str | None = None,
        prompt_format: inputs.ChatFormat | None = None,
        **options: Any,
    ) -> ModelChain:
        """Load a chain from hub ids or local directories: full checkpoints M_0 .. M_K, or one base
        (a string, or a list of one) with ``adapters`` stacked on it in order (one base copy in
        memory). ``options`` as ``ModelPair.from_pretrained`` takes them (``dtype``, ``device_map``,
        ``max_memory``, ``tokenizer``, ``trust_remote_code``, ``batch_invariant``, ...)."""
        names = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
        models, tok, adapter_names, why = load_chain(
            names, adapters=list(adapters) if adapters else None, **options
        )
        chain = cls(
            models,
            tok,
            adapters=adapter_names,
            block_path=block_path,
            prompt_format=prompt_format,
            dtype_reason=why,
        )
        chain.identity = " -> ".join([*names, *(adapters or ())])  # as tuco.models.identity names it
        return chain

    def _stage_context(self, k: int, layer: int) -> contextlib.AbstractContextManager:
        """Stage k's block in PEFT mode: the base with the first k adapters."""
        assert self.adapter_names is not None
        return adapters_only(self.ft_blocks[layer], self.adapter_names[:k])


def _check_adapters(model: nn.Module, names: list[str]) -> None:
    held = list(getattr(model, "peft_config", {}) or {})
    if not held:
        raise ValueError("With adapters, the model must be a PEFT model (base + adapters).")
    if not names:
        raise ValueError(f"Name the adapters to stack, in order: the model holds {', '.join(held)}.")
    missing = [n for n in names if n not in held]
    if missing:
        raise ValueError(f"The PEFT model holds no adapter {', '.join(missing)}; it holds {', '.join(held)}.")
