"""``PairBase``: a model pair's state and its primitive operations, typed, below every module that
uses a pair.

``ModelPair`` (``tuco.pair``) is a ``PairBase`` plus what TuCo does with it (score, logits,
generation); the modules under ``ModelPair`` that need a pair (``tuco.decoding``,
``tuco.baselines``) take a ``PairBase``, so nothing calls up into the layer above::

    >>> base = PairBase(pretrained=pt_model, finetuned=ft_model, tokenizer=tok)
    >>> ids = base.encode(["Hello!"])                 # token ids, chats through the chat template
    >>> with base.steered(alpha=0.8):                 # x + PTC + 0.8 FTC at every block
    ...     base.finetuned(**batch)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch
import torch.nn as nn

from . import compat, inputs, progress
from .blocks import contiguous_unembedding, embedding_weight, find_blocks, unwrap
from .decompose import Decomposition, adapters_off, adapters_subtracted, lora_layers, pt_blocks_needed
from .errors import Alpha, check_alpha, check_choice, check_int
from .inputs import Prompts, Side

log = logging.getLogger("tuco")
T = TypeVar("T")
_NO_LIMIT = 10**7  # a tokenizer's model_max_length at or above this is "unset" (transformers: 1e30)


class PairBase:
    """A pre-trained (PT) model and its fine-tuned (FT) version, with one tokenizer.

    ``PairBase(pretrained=pt_model, finetuned=ft_model, tokenizer=tok)`` pairs two models in
    memory; ``PairBase(finetuned=peft_model, tokenizer=tok)`` is PEFT mode: the PT block is the
    same block with its adapter switched off. ``pretrained_tokenizer`` is checked against
    ``tokenizer`` (give ``use_finetuned_tokenizer=True`` to accept a mismatch).
    ``block_path`` overrides block discovery (``"model.layers"``). ``prompt_format(chat) ->
    text``, when given, formats chats instead of the tokenizer's chat template (the paper's pairs:
    ``tuco.registry.paper_chat``). ``dtype_reason`` says how the dtype was chosen.
    """

    def __init__(
        self,
        pretrained: nn.Module | None = None,
        finetuned: nn.Module | None = None,
        tokenizer: Any = None,
        *,
        pretrained_tokenizer: Any = None,
        use_finetuned_tokenizer: bool = False,
        block_path: str | None = None,
        prompt_format: inputs.ChatFormat | None = None,
        dtype_reason: str = "as given",
    ):
        if finetuned is None:
            raise ValueError("ModelPair needs finetuned= (the fine-tuned model, or a PEFT model).")
        # PreTrainedModel or a PEFT model around one: transformers' API (generate, ...) either way
        self.finetuned: Any = finetuned
        self.pretrained, self.tokenizer = pretrained, tokenizer
        self.prompt_format = prompt_format
        self.dtype_reason = dtype_reason
        # a name for the models that holds on every machine (caches keyed by model: GCG strings);
        # ``tuco.models.load`` sets it, None: the checkpoints' own names
        self.identity: str | None = None
        self.adapter_mode = pretrained is None
        self.ft_blocks = find_blocks(finetuned, block_path)
        if pretrained is None:  # adapter mode
            if not hasattr(finetuned, "disable_adapter"):
                raise ValueError(
                    "Without pretrained=, finetuned must be a PEFT model (base + adapter); "
                    "otherwise pass the pre-trained model as pretrained=."
                )
            self.pt_blocks = self.ft_blocks
            self.notes: list[str] = []
        else:
            self.notes = compat.check_configs(unwrap(pretrained).config, unwrap(finetuned).config)
            self.pt_blocks = find_blocks(pretrained, block_path)
            compat.check_models(pretrained, finetuned, self.pt_blocks, self.ft_blocks)
        self.notes += compat.check_tokenizers(pretrained_tokenizer, tokenizer, use_finetuned_tokenizer)
        for note in self.notes:
            log.info("tuco: %s", note)
        for model in (pretrained, finetuned):  # a CPU slow path of torch's (blocks.py)
            if model is not None:
                contiguous_unembedding(model)
        self.body: nn.Module = unwrap(finetuned).base_model  # the blocks without the unembedding
        self.body_takes_positions = "position_ids" in inspect.signature(self.body.forward).parameters
        self.padding: dict[str, int] = {}  # token counts of the last length-sorted batching

    # ------------------------------------------------------------------ what the pair is
    @property
    def device(self) -> torch.device:
        return embedding_weight(self.finetuned).device

    @property
    def dtype_name(self) -> str:
        """The dtype the pair computes in, by name: "float32", "bfloat16", ..."""
        return str(embedding_weight(self.finetuned).dtype).removeprefix("torch.")

    @property
    def num_layers(self) -> int:
        return len(self.ft_blocks)

    @property
    def vocab_size(self) -> int:
        return int(embedding_weight(self.finetuned).shape[0])

    @property
    def formats_chats(self) -> bool:
        """Whether chats can be formatted: a chat template, or a ``prompt_format``."""
        return self.prompt_format is not None or getattr(self.tokenizer, "chat_template", None) is not None

    @property
    def context_length(self) -> int | None:
        """Positions the model takes: ``max_position_embeddings`` of its text config, or the
        tokenizer's ``model_max_length`` where that is smaller; None if neither is set."""
        text_config = unwrap(self.finetuned).config.get_text_config()
        limits = [getattr(text_config, "max_position_embeddings", None)]
        limits.append(getattr(self.tokenizer, "model_max_length", None))
        real = [int(n) for n in limits if isinstance(n, int | float) and 0 < n < _NO_LIMIT]
        return min(real) if real else None

    def room(self, prompt_tokens: int) -> int | None:
        """The new tokens a prompt of ``prompt_tokens`` leaves room for in the context (None: no limit)."""
        return None if self.context_length is None else self.context_length - prompt_tokens

    def check_prompts(self, ids: list[list[int]], reserve: int = 0) -> None:
        """Refuse ids outside the vocabulary, and prompts that with ``reserve`` new tokens would not
        fit the context (``ValueError`` naming the prompt and the fix)."""
        inputs.check_ids(ids, self.vocab_size, self.context_length, reserve)

    @property
    def pt_model(self) -> nn.Module:
        """The pre-trained model: ``pretrained``, or in PEFT mode the PEFT model (run it inside
        ``adapters_off`` to get the base)."""
        return self.finetuned if self.pretrained is None else self.pretrained

    @property
    def pad_id(self) -> int:
        return inputs.pad_id(self.tokenizer) if self.tokenizer is not None else 0

    def eos_ids(self) -> set[int]:
        """End-of-sequence ids: the generation config's (one or several) and the tokenizer's."""
        ids = getattr(self.finetuned.generation_config, "eos_token_id", None)
        found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
        if getattr(self.tokenizer, "eos_token_id", None) is not None:
            found.add(self.tokenizer.eos_token_id)
        return found

    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids of each prompt (strings, chats, or a dict / BatchEncoding with input_ids)."""
        return inputs.encode(self.tokenizer, prompts, self.prompt_format)

    def side(self, padding_side: Side | None) -> Side:
        """The padding side asked for, else the tokenizer's, else right."""
        if padding_side is not None:
            check_choice(padding_side, "padding_side", ("left", "right"))
        return padding_side or getattr(self.tokenizer, "padding_side", None) or "right"

    # ------------------------------------------------------------------ adapter mode
    merged_adapter = False  # merge_adapter() was called
    _lora_layers: dict[int, list] = {}  # id(block) -> its LoRA layers, once merged

    def pt_side(self, module: nn.Module) -> AbstractContextManager:
        """In adapter mode, the context that makes ``module`` (a block, or the whole PEFT model)
        compute as the pre-trained model: its adapters off, or with ``merge_adapter``, subtracted."""
        if self.merged_adapter:
            return adapters_subtracted(module, self._lora_layers.get(id(module)))
        return adapters_off(module)

    def merge_adapter(self) -> str | None:
        """Adapter mode in float32: merge the LoRA adapter into the base weights (in place, no
        memory), so the FT side runs as a plain model does (as fast as a merged checkpoint), and the
        PT side subtracts the adapter's update instead of skipping it: the same TuCo to rounding
        (1e-6). None when merged, else why not (another dtype, a LoRA variant, ...)."""
        if not self.adapter_mode or self.merged_adapter:
            return None if self.merged_adapter else "not a base + adapter pair"
        if self.dtype_name != "float32":
            return f"{self.dtype_name}: merged weights would round the adapter's update"
        layers = lora_layers(self.ft_blocks)
        kinds = {type(m).__name__ for m in layers}
        if not layers or kinds != {"Linear"} or any(getattr(m, "lora_variant", None) for m in layers):
            return f"LoRA layers of kinds {sorted(kinds)} (plain LoRA Linear layers merge)"
        if getattr(self, "stage_blocks", None):
            return "a chain's stacked adapters stay apart"
        self.finetuned.merge_adapter()
        self.merged_adapter = True
        self._lora_layers = {id(block): lora_layers(block) for block in self.ft_blocks}  # found once
        return None

    # ------------------------------------------------------------------ the decomposition
    def steer(
        self,
        alpha: Alpha = 1.0,
        *,
        last_only: bool = False,
        components: bool = False,
        heads: bool = False,
        row_alpha: torch.Tensor | None = None,
        later: bool = False,
    ) -> Decomposition:
        """Context manager: inside it, ``self.finetuned`` computes x + PTC + alpha * FTC at every block
        (``alpha={"attn": a, "mlp": b}``: x + PTC + a FTC^attn + b FTC^mlp).
        ``last_only``: the PT blocks run at the last position only (alpha = 1, left-padded batches).
        ``components`` / ``heads``: the record splits each block into attention and MLP / heads.
        ``row_alpha`` ([batch] floats, with alpha = 1): each row at its own alpha.
        ``later`` (with ``last_only``): the PT blocks run at ``run_later()``, after the pass.
        A chain (``tuco.chain``) also runs its intermediate checkpoints' blocks (``stage_blocks``)."""
        alpha = check_alpha(alpha)
        pt_context = (lambda layer: self.pt_side(self.ft_blocks[layer])) if self.adapter_mode else None
        config = unwrap(self.finetuned).config.get_text_config()
        return Decomposition(
            self.ft_blocks,
            self.pt_blocks,
            alpha,
            pt_context,
            last_only=last_only,
            components=components,
            heads=heads,
            num_heads=getattr(config, "num_attention_heads", None),
            width=getattr(config, "hidden_size", None),
            stages=self.stage_blocks,
            stage_context=self.stage_context,
            row_alpha=row_alpha,
            later=later,
        )

    # a pair has no stages between its two models; ``tuco.chain.ModelChain`` sets them
    stage_blocks: list[nn.ModuleList] | None = None
    stage_context: Callable[[int, int], AbstractContextManager] | None = None

    def steered(self, alpha: Alpha, reads: str = "nothing", **split) -> AbstractContextManager:
        """The FTC-alpha model for a pass that ``reads`` components ``"nothing"``, at the ``"last"``
        token, or ``"all"``: the PT blocks ``tuco.decompose.pt_blocks_needed`` says (none at all for
        alpha = 1 reading nothing: then this is a null context, the FT model itself). ``split``:
        ``components`` and ``heads``, as ``steer`` takes them."""
        needed = pt_blocks_needed(check_alpha(alpha), reads)
        if needed == "none":
            return contextlib.nullcontext()
        return self.steer(alpha, last_only=needed == "last", **split)

    # ------------------------------------------------------------------ batching
    def sorted_batches(self, ids: list[list[int]], batch_size: int, reserve: int = 0) -> list[list[int]]:
        """Batches of prompt indices, longest prompts first (less padding), after ``check_prompts``;
        the padding the sorting saves is logged and kept in ``self.padding`` (token counts)."""
        check_int(batch_size, "batch_size")
        self.check_prompts(ids, reserve)
        chunks, self.padding = inputs.length_sorted(ids, batch_size)
        return chunks

    def map_batches(
        self,
        ids: list[list[int]],
        batch_size: int,
        side: Side,
        desc: str,
        progress_bar: bool | None,
        compute: Callable[[dict[str, torch.Tensor]], Sequence[T]],
        reserve: int = 0,
    ) -> list[T]:
        """``compute(batch)`` (one result per row) over the ``sorted_batches`` of ``ids``, padded on
        ``side`` and on the pair's device; the results in input order."""
        out: list[Any] = [None] * len(ids)
        with progress.bar(len(ids), desc, progress_bar) as bar:
            for chunk in self.sorted_batches(ids, batch_size, reserve):
                batch = inputs.pad([ids[i] for i in chunk], self.pad_id, side)
                results = compute({k: v.to(self.device) for k, v in batch.items()})
                for i, result in zip(chunk, results, strict=True):
                    out[i] = result
                bar.update(len(chunk))
        return out

    def body_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` as the model body takes it (without position ids where its forward has none)."""
        return batch if self.body_takes_positions else {k: v for k, v in batch.items() if k != "position_ids"}
