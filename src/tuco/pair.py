"""``ModelPair``: a pre-trained model and its fine-tune, and everything TuCo does with them.

>>> pair = ModelPair.from_pretrained("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf",
...                                  dtype=torch.bfloat16, device_map="auto")
>>> pair = ModelPair.from_pretrained("base-model-dir", adapter="lora-adapter-dir")   # PEFT mode
>>> [r.tuco for r in pair.score(["Hello!", [{"role": "user", "content": "Hi"}]])]
>>> pair.generate("Tell me a joke.", alpha=0.8, max_new_tokens=30)
>>> with pair.steer(alpha=1.2):            # any forward / generate of pair.finetuned
...     pair.finetuned(**batch)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import baselines, compat, inputs
from . import monitor as monitoring
from .blocks import contiguous_unembedding, embedding_weight, find_blocks, unwrap
from .decompose import Decomposition, adapters_off
from .errors import check_alpha, check_choice, check_int
from .inputs import Prompts, Side
from .loading import load_models
from .monitor import Generation, Sampling, TokenEvent
from .results import OutputContribution, TucoResult, from_record

log = logging.getLogger("tuco")
T = TypeVar("T")


class ModelPair:
    """A pre-trained (PT) model and its fine-tuned (FT) version, with one tokenizer.

    ``ModelPair(pretrained=pt_model, finetuned=ft_model, tokenizer=tok)`` pairs two models in
    memory; ``ModelPair(finetuned=peft_model, tokenizer=tok)`` is PEFT mode: the PT block is the
    same block with its adapter switched off. ``pretrained_tokenizer`` is checked against
    ``tokenizer`` (give ``use_finetuned_tokenizer=True`` to accept a mismatch).
    ``block_path`` overrides block discovery (``"model.layers"``). ``prompt_format(chat) ->
    text``, when set, formats chats instead of the tokenizer's chat template (the paper's pairs:
    ``tuco.experiments.registry.paper_chat``).
    """

    def __init__(
        self,
        pretrained: nn.Module | None = None,
        finetuned: nn.Module | None = None,
        tokenizer=None,
        *,
        pretrained_tokenizer=None,
        use_finetuned_tokenizer: bool = False,
        block_path: str | None = None,
    ):
        if finetuned is None:
            raise ValueError("ModelPair needs finetuned= (the fine-tuned model, or a PEFT model).")
        # PreTrainedModel or a PEFT model around one: transformers' API (generate, ...) either way
        self.finetuned: Any = finetuned
        self.pretrained, self.tokenizer = pretrained, tokenizer
        self.prompt_format: inputs.ChatFormat | None = None
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
        self.dtype_reason = "as given"  # from_pretrained says how it chose the dtype
        for model in (pretrained, finetuned):  # a CPU slow path of torch's (blocks.py)
            if model is not None:
                contiguous_unembedding(model)
        ft_lm = unwrap(finetuned)
        self._body = ft_lm.base_model  # the blocks without the unembedding: all TuCo needs
        self._body_takes_positions = "position_ids" in inspect.signature(self._body.forward).parameters

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str,
        finetuned: str | None = None,
        *,
        adapter: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        tokenizer: str | None = None,
        use_finetuned_tokenizer: bool = False,
        trust_remote_code: bool = False,
        block_path: str | None = None,
        batch_invariant: bool = False,
        **model_kwargs,
    ) -> ModelPair:
        """Load a pair from hub ids or local directories (the same ``from_pretrained`` path): give
        ``finetuned`` (a full model) or ``adapter`` (a PEFT LoRA adapter on ``pretrained``).
        ``dtype="auto"`` (the default, as on the command line) is the fastest dtype the hardware
        has (``tuco.hardware``); ``batch_invariant=True`` makes it float32 (what ``tuco serve``
        and ``tuco calibrate`` use); ``dtype=None`` keeps transformers' default (the checkpoint's).
        How ``device_map`` places both models alike: ``tuco.loading.load_models``.
        The dtype chosen, and why, is logged and kept in ``pair.dtype_reason``."""
        pt, ft, tok, pt_tok, why = load_models(
            pretrained,
            finetuned,
            adapter=adapter,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            tokenizer=tokenizer,
            use_finetuned_tokenizer=use_finetuned_tokenizer,
            trust_remote_code=trust_remote_code,
            batch_invariant=batch_invariant,
            **model_kwargs,
        )
        pair = cls(
            pt,
            ft,
            tok,
            pretrained_tokenizer=pt_tok,
            use_finetuned_tokenizer=use_finetuned_tokenizer,
            block_path=block_path,
        )
        pair.dtype_reason = why
        return pair

    # ------------------------------------------------------------------ helpers
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
    def formats_chats(self) -> bool:
        """Whether chats can be formatted: a chat template, or a ``prompt_format``."""
        return self.prompt_format is not None or getattr(self.tokenizer, "chat_template", None) is not None

    @property
    def context_length(self) -> int | None:
        """Positions the model takes (``max_position_embeddings`` of its text config; None if unset)."""
        text_config = unwrap(self.finetuned).config.get_text_config()
        return getattr(text_config, "max_position_embeddings", None)

    @property
    def vocab_size(self) -> int:
        return embedding_weight(self.finetuned).shape[0]

    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids of each prompt (strings, chats, or a dict / BatchEncoding with input_ids)."""
        return inputs.encode(self.tokenizer, prompts, self.prompt_format)

    def steer(self, alpha: float = 1.0, *, last_only: bool = False) -> Decomposition:
        """Context manager: inside it, ``self.finetuned`` computes x + PTC + alpha * FTC at every block.
        ``last_only``: the PT blocks run at the last position only (alpha = 1, left-padded batches)."""
        alpha = check_alpha(alpha)
        pt_context = (lambda layer: adapters_off(self.ft_blocks[layer])) if self.adapter_mode else None
        return Decomposition(self.ft_blocks, self.pt_blocks, alpha, pt_context, last_only=last_only)

    def _steered(self, alpha: float):
        """``steer(alpha)``, or nothing at all at alpha = 1 (the FT model itself, no PT blocks)."""
        return self.steer(alpha) if alpha != 1.0 else contextlib.nullcontext()

    def _each_batch(
        self,
        ids: list[list[int]],
        batch_size: int,
        side: Side,
        desc: str,
        progress: bool | None,
        compute: Callable[[dict[str, torch.Tensor]], Sequence[T]],
        reserve: int = 0,
    ) -> list[T]:
        """``compute(batch)`` (one result per row) over length-sorted padded batches of ``ids``
        (longest first, on the pair's device); the results in input order. The padding the sorting
        saves is logged and kept in ``self.padding`` (token counts). Ids outside the vocabulary, and
        prompts longer than the context less ``reserve`` positions, raise ValueError first."""
        check_int(batch_size, "batch_size")
        inputs.check_ids(ids, self.vocab_size, self.context_length, reserve)
        chunks, self.padding = inputs.length_sorted(ids, batch_size)
        pad_id = inputs.pad_id(self.tokenizer) if self.tokenizer is not None else 0
        out: list = [None] * len(ids)
        with tqdm(
            total=len(ids), desc=desc, unit="prompt", disable=None if progress is None else not progress
        ) as bar:
            for chunk in chunks:
                batch = inputs.pad([ids[i] for i in chunk], pad_id, side)
                for i, result in zip(
                    chunk, compute({k: v.to(self.device) for k, v in batch.items()}), strict=True
                ):
                    out[i] = result
                bar.update(len(chunk))
        return out

    def _side(self, padding_side: Side | None) -> Side:
        if padding_side is not None:
            check_choice(padding_side, "padding_side", ("left", "right"))
        return padding_side or getattr(self.tokenizer, "padding_side", None) or "right"

    # ------------------------------------------------------------------ TuCo
    @torch.inference_mode()
    def score(
        self,
        prompts: Prompts,
        *,
        alpha: float = 1.0,
        batch_size: int = 8,
        per_token: bool = False,
        norm: Literal["l1", "l2"] = "l1",
        padding_side: Side | None = None,
        progress: bool | None = None,
        fast: bool = True,
    ) -> list[TucoResult]:
        """TuCo of every prompt at its last real token, one ``TucoResult`` each, in input order.

        Cost: one FT forward without the unembedding, plus the PT blocks on the same inputs: at
        alpha = 1 without ``per_token`` (and ``fast``), each PT block runs at the last position only,
        with its keys and values over every position (``tuco.lastpos``: about 1.1-1.3x one forward);
        otherwise every PT block runs on every position (about 2x).
        ``per_token=True`` also gives TuCo at every position (keeps [batch, seq, d] sums).
        ``norm="l2"`` uses L2 norms throughout instead of the paper's L1.
        ``alpha != 1`` measures along the FTC-alpha model's stream (x_{l+1} = x_l + PTC_l + alpha * FTC_l);
        the FTC_l summed are the blocks' own differences there, not multiplied by alpha.
        """
        check_choice(norm, "norm", ("l1", "l2"))
        alpha = check_alpha(alpha)
        last_only = fast and alpha == 1.0 and not per_token
        side = "left" if last_only else self._side(padding_side)  # fast path: last tokens at -1

        def compute(batch: dict[str, torch.Tensor]) -> list[TucoResult]:
            if not self._body_takes_positions:
                batch.pop("position_ids")
            with self.steer(alpha, last_only=last_only) as dec:
                rec = dec.record(inputs.last_index(batch["attention_mask"]), per_token, p=int(norm[1]))
                self._body(**batch, use_cache=False)
            return from_record(rec, batch["attention_mask"])

        return self._each_batch(self.encode(prompts), batch_size, side, "TuCo", progress, compute)

    # ------------------------------------------------------------------ FTC-alpha model
    @torch.inference_mode()
    def logits(
        self, prompts: Prompts, alpha: float = 1.0, *, padding_side: Side | None = None
    ) -> torch.Tensor:
        """Float32 logits [batch, seq, vocab] of the FTC-alpha model, prompts in input order,
        padded on ``padding_side`` (default: the tokenizer's). alpha = 1 is the FT model itself."""
        alpha = check_alpha(alpha)
        ids = self.encode(prompts)
        inputs.check_ids(ids, self.vocab_size, self.context_length)
        batch = inputs.pad(
            ids, inputs.pad_id(self.tokenizer) if self.tokenizer else 0, self._side(padding_side)
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self._steered(alpha):
            return self.finetuned(**batch, use_cache=False).logits.float()

    @torch.inference_mode()
    def next_token_probs(
        self,
        prompts: Prompts,
        alpha: float = 1.0,
        *,
        token_ids: list[int] | None = None,
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Float32 next-token probabilities after each prompt under the FTC-alpha model, in input order:
        [n_prompts, vocab], or [n_prompts, len(token_ids)] for the given candidate tokens only."""
        alpha = check_alpha(alpha)
        if token_ids is not None:
            inputs.check_ids([list(token_ids)], self.vocab_size, None)

        def compute(batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
            with self._steered(alpha):
                logits = self.finetuned(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            return list((probs if token_ids is None else probs[:, token_ids]).cpu())

        rows: list[torch.Tensor] = self._each_batch(
            self.encode(prompts), batch_size, "left", f"next token a={alpha:g}", progress, compute
        )
        return torch.stack(rows) if rows else torch.empty(0)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Prompts,
        alpha: float = 1.0,
        *,
        batch_size: int = 8,
        progress: bool | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """Generated text (new tokens only) of the FTC-alpha model for every prompt, with KV caches
        for both the FT and the PT blocks. ``generate_kwargs`` go to ``model.generate``; a prompt
        plus ``max_new_tokens`` longer than the model's context is refused (ValueError)."""
        alpha = check_alpha(alpha)
        generate_kwargs.setdefault("pad_token_id", inputs.pad_id(self.tokenizer))
        new_tokens = generate_kwargs.get("max_new_tokens")
        if new_tokens is None:
            new_tokens = getattr(self.finetuned.generation_config, "max_new_tokens", None) or 0
        check_int(new_tokens, "max_new_tokens", 0 if "max_new_tokens" not in generate_kwargs else 1)

        def compute(batch: dict[str, torch.Tensor]) -> list[str]:
            batch.pop("position_ids")  # generate derives them from the attention mask
            with self._steered(alpha):
                tokens = self.finetuned.generate(**batch, **generate_kwargs)
            return self.tokenizer.batch_decode(
                tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )

        return self._each_batch(
            self.encode(prompts), batch_size, "left", f"generate a={alpha:g}", progress, compute, new_tokens
        )

    def stream_with_tuco(
        self,
        prompts: Prompts,
        alpha: float = 1.0,
        *,
        monitor: Literal["tokens", "prompt"] = "tokens",
        norm: Literal["l1", "l2"] = "l1",
        batch_size: int = 8,
        **sampling: Any,
    ) -> Iterator[TokenEvent]:
        """Generate with the FTC-alpha model and report TuCo as it goes: one ``TokenEvent`` per new
        token (its text and TuCo; the prompt's TuCo on a prompt's first), ``batch_size`` prompts
        decoded together, in input order. ``sampling``: the fields of ``tuco.monitor.Sampling``
        (``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``, ``top_k``, ``seed``, ``stop``).
        ``monitor="prompt"``: the prompt's TuCo only (at alpha = 1 decoding skips the PT blocks).
        Same forward passes as generation: see ``tuco.monitor`` for where each TuCo is read."""
        ids = self.encode(prompts)
        return monitoring.stream(
            self, ids, Sampling(**sampling), alpha=alpha, monitor=monitor, norm=norm, batch_size=batch_size
        )

    def generate_with_tuco(
        self,
        prompts: Prompts,
        alpha: float = 1.0,
        *,
        monitor: Literal["tokens", "prompt"] = "tokens",
        norm: Literal["l1", "l2"] = "l1",
        batch_size: int = 8,
        **sampling: Any,
    ) -> list[Generation]:
        """``stream_with_tuco`` collected: one ``Generation`` per prompt (text, token ids, prompt TuCo,
        one TuCo per generated token, finish reason), in input order."""
        ids = self.encode(prompts)
        options = dict(alpha=alpha, monitor=monitor, norm=norm, batch_size=batch_size)
        return monitoring.generate(self, ids, Sampling(**sampling), **options)

    # ------------------------------------------------------------------ output-only baselines
    @torch.inference_mode()
    def output_contribution(
        self, prompts: Prompts, *, batch_size: int = 8, progress: bool | None = None
    ) -> list[OutputContribution]:
        """OutputCo and KL(p_FT || p_PT) at the last prompt token, from each model's own forward.

        KL is taken over the vocabulary both models share (the first min(V_PT, V_FT) ids).
        """
        compute = baselines.output_contribution_of(self)
        return self._each_batch(self.encode(prompts), batch_size, "left", "OutputCo", progress, compute)
