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
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import compat, inputs, metrics
from .blocks import find_blocks, unwrap
from .decompose import Decomposition, adapters_off
from .hardware import resolve_dtype
from .inputs import Prompts, Side
from .loading import checkpoint_dtype, joint_device_map, load, load_model, load_tokenizer
from .results import OutputContribution, TucoResult, from_record

log = logging.getLogger("tuco")


class ModelPair:
    """A pre-trained (PT) model and its fine-tuned (FT) version, with one tokenizer.

    ``ModelPair(pretrained=pt_model, finetuned=ft_model, tokenizer=tok)`` pairs two models in
    memory; ``ModelPair(finetuned=peft_model, tokenizer=tok)`` is PEFT mode: the PT block is the
    same block with its adapter switched off. ``pretrained_tokenizer`` is checked against
    ``tokenizer`` (give ``use_finetuned_tokenizer=True`` to accept a mismatch).
    ``block_path`` overrides block discovery (``"model.layers"``).
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
        self.finetuned, self.pretrained, self.tokenizer = finetuned, pretrained, tokenizer
        self.adapter_mode = pretrained is None
        self.ft_blocks = find_blocks(finetuned, block_path)
        if self.adapter_mode:
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
        dtype: str | torch.dtype | None = None,
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
        tokenizer: str | None = None,
        use_finetuned_tokenizer: bool = False,
        trust_remote_code: bool = False,
        block_path: str | None = None,
        **model_kwargs,
    ) -> ModelPair:
        """Load a pair from hub ids or local directories (the same ``from_pretrained`` path).

        Give ``finetuned`` (a full fine-tuned model) or ``adapter`` (a PEFT LoRA adapter on top of
        ``pretrained``: one copy of the base weights). ``dtype="auto"`` chooses from the hardware
        (``tuco.hardware``: the checkpoint's dtype on a GPU; on CPU bf16 only where it is native, else
        float32), the same for both models; the choice and why are logged and kept in
        ``pair.dtype_reason``. ``dtype`` and ``model_kwargs`` (e.g. ``offload_folder``) go to
        ``AutoModelForCausalLM.from_pretrained``. ``device_map`` ("auto",
        "balanced", "sequential", a device, or a module -> device dict) places both models alike, so
        that block l of both always sits on the same device; with "auto" & co. the placement is
        computed for the two models together within ``max_memory`` (half of each device's budget
        per model), with CPU and disk offload as accelerate's fallbacks. Configs and tokenizers are
        checked before any weight is loaded.
        """
        from transformers import AutoConfig

        if (finetuned is None) == (adapter is None):
            raise ValueError("Pass exactly one of finetuned= (a full model) or adapter= (a PEFT adapter).")
        kwargs = dict(model_kwargs, trust_remote_code=trust_remote_code)
        configs = [
            load(AutoConfig.from_pretrained, name, which, trust_remote_code=trust_remote_code)
            for name, which in ((pretrained, "pretrained"), (finetuned, "finetuned"))
            if name is not None
        ]
        config = configs[-1]  # the fine-tuned checkpoint's (the base's for an adapter)
        kwargs["dtype"], why = resolve_dtype(dtype, device_map, checkpoint_dtype(config))
        if kwargs["dtype"] is None:
            del kwargs["dtype"]
        log.info("dtype %s (%s)", str(kwargs.get("dtype", "default")).removeprefix("torch."), why)
        if adapter is not None:
            tok = load_tokenizer(tokenizer or adapter, fallback=pretrained, trust=trust_remote_code)
            if max_memory is not None:
                kwargs["max_memory"] = max_memory
            base = load_model(pretrained, "pretrained", device_map=device_map, **kwargs)
            from peft import PeftModel

            try:
                # the adapter computes in the model's dtype, as a merged model would: fp32 adapters on a
                # bf16 base upcast every LoRA input, which costs more activation memory than the base
                ft = PeftModel.from_pretrained(base, adapter, autocast_adapter_dtype=False)
            except (OSError, ValueError) as e:
                raise OSError(f"Could not load the adapter {adapter!r}: {e}") from e
            pair = cls(None, ft.eval(), tok, block_path=block_path)
        else:
            compat.check_configs(*configs)
            ft_tok = load_tokenizer(tokenizer or finetuned, fallback=pretrained, trust=trust_remote_code)
            pt_tok = load_tokenizer(pretrained, fallback=None, trust=trust_remote_code)
            compat.check_tokenizers(pt_tok, ft_tok, use_finetuned_tokenizer)
            if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
                device_map = joint_device_map(config, device_map, max_memory, kwargs.get("dtype"))
            # The same placement for both: module names agree (same architecture).
            ft = load_model(finetuned, "finetuned", device_map=device_map, **kwargs)
            pt = load_model(pretrained, "pretrained", device_map=device_map, **kwargs)
            pair = cls(
                pt,
                ft,
                ft_tok,
                pretrained_tokenizer=pt_tok,
                use_finetuned_tokenizer=use_finetuned_tokenizer,
                block_path=block_path,
            )
        pair.dtype_reason = why
        return pair

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return unwrap(self.finetuned).get_input_embeddings().weight.device

    @property
    def num_layers(self) -> int:
        return len(self.ft_blocks)

    def encode(self, prompts: Prompts) -> list[list[int]]:
        """Token ids of each prompt (strings, chats, or a dict / BatchEncoding with input_ids)."""
        return inputs.encode(self.tokenizer, prompts)

    def steer(self, alpha: float = 1.0, *, last_only: bool = False) -> Decomposition:
        """Context manager: inside it, ``self.finetuned`` computes x + PTC + alpha * FTC at every block.
        ``last_only``: the PT blocks run at the last position only (alpha = 1, left-padded batches)."""
        pt_context = (lambda layer: adapters_off(self.ft_blocks[layer])) if self.adapter_mode else None
        return Decomposition(self.ft_blocks, self.pt_blocks, alpha, pt_context, last_only=last_only)

    def _batches(
        self, ids: list[list[int]], batch_size: int, side: Side, desc: str, progress: bool | None
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """Length-sorted padded batches (longest first) of token ids, with their prompt indices.
        The padding this saves is logged and kept in ``self.padding`` (token counts)."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))

        def padded(sequence: list[int]) -> int:
            chunks = [sequence[s : s + batch_size] for s in range(0, len(sequence), batch_size)]
            return sum(len(c) * max(len(ids[i]) for i in c) for c in chunks)

        self.padding = {
            "tokens": sum(map(len, ids)),
            "sorted": padded(order),
            "input_order": padded(range(len(ids))),
        }
        if self.padding["input_order"] > self.padding["sorted"]:
            log.info(
                "length-sorted batches: %d padded tokens instead of %d in input order (%d real)",
                self.padding["sorted"],
                self.padding["input_order"],
                self.padding["tokens"],
            )
        pad_id = inputs.pad_id(self.tokenizer) if self.tokenizer is not None else 0
        with tqdm(
            total=len(ids), desc=desc, unit="prompt", disable=None if progress is None else not progress
        ) as bar:
            for start in range(0, len(ids), batch_size):
                chunk = order[start : start + batch_size]
                batch = inputs.pad([ids[i] for i in chunk], pad_id, side)
                yield chunk, {k: v.to(self.device) for k, v in batch.items()}
                bar.update(len(chunk))

    def _side(self, padding_side: Side | None) -> Side:
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
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', not {norm!r}")
        ids = self.encode(prompts)
        results: list[TucoResult | None] = [None] * len(ids)
        last_only = fast and alpha == 1.0 and not per_token
        side = "left" if last_only else self._side(padding_side)  # fast path: last tokens at -1
        for chunk, batch in self._batches(ids, batch_size, side, "TuCo", progress):
            if not self._body_takes_positions:
                batch.pop("position_ids")
            with self.steer(alpha, last_only=last_only) as dec:
                rec = dec.record(inputs.last_index(batch["attention_mask"]), per_token, p=int(norm[1]))
                self._body(**batch, use_cache=False)
            for i, result in zip(chunk, from_record(rec, batch["attention_mask"]), strict=True):
                results[i] = result
        return results

    # ------------------------------------------------------------------ FTC-alpha model
    @torch.inference_mode()
    def logits(
        self, prompts: Prompts, alpha: float = 1.0, *, padding_side: Side | None = None
    ) -> torch.Tensor:
        """Float32 logits [batch, seq, vocab] of the FTC-alpha model, prompts in input order,
        padded on ``padding_side`` (default: the tokenizer's). alpha = 1 is the FT model itself."""
        ids = self.encode(prompts)
        batch = inputs.pad(
            ids, inputs.pad_id(self.tokenizer) if self.tokenizer else 0, self._side(padding_side)
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.steer(alpha) if alpha != 1.0 else contextlib.nullcontext():
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
        ids = self.encode(prompts)
        rows: list[torch.Tensor | None] = [None] * len(ids)
        for chunk, batch in self._batches(ids, batch_size, "left", f"next token a={alpha:g}", progress):
            with self.steer(alpha) if alpha != 1.0 else contextlib.nullcontext():
                logits = self.finetuned(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            if token_ids is not None:
                probs = probs[:, token_ids]
            for i, row in zip(chunk, probs.cpu(), strict=True):
                rows[i] = row
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
        for both the FT and the PT blocks. ``generate_kwargs`` go to ``model.generate``."""
        ids = self.encode(prompts)
        out: list[str | None] = [None] * len(ids)
        generate_kwargs.setdefault("pad_token_id", inputs.pad_id(self.tokenizer))
        for chunk, batch in self._batches(ids, batch_size, "left", f"generate a={alpha:g}", progress):
            batch.pop("position_ids")  # generate derives them from the attention mask
            with self.steer(alpha) if alpha != 1.0 else contextlib.nullcontext():
                tokens = self.finetuned.generate(**batch, **generate_kwargs)
            new = tokens[:, batch["input_ids"].shape[1] :]
            for i, text in zip(
                chunk, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True
            ):
                out[i] = text
        return out

    # ------------------------------------------------------------------ output-only baselines
    @torch.inference_mode()
    def output_contribution(
        self, prompts: Prompts, *, batch_size: int = 8, progress: bool | None = None
    ) -> list[OutputContribution]:
        """OutputCo and KL(p_FT || p_PT) at the last prompt token, from each model's own forward.

        KL is taken over the vocabulary both models share (the first min(V_PT, V_FT) ids).
        """
        ids = self.encode(prompts)
        out: list[OutputContribution | None] = [None] * len(ids)
        pt_model = self.finetuned if self.adapter_mode else self.pretrained
        pt_vocab = unwrap(pt_model).get_input_embeddings().weight.shape[0]
        for chunk, batch in self._batches(ids, batch_size, "left", "OutputCo", progress):
            if int(batch["input_ids"].max()) >= pt_vocab:
                raise ValueError(
                    f"A prompt holds token ids >= {pt_vocab}, the pretrained vocabulary size (tokens added "
                    "by fine-tuning): the pretrained model cannot run on it for OutputCo."
                )
            x_ft, logits_ft = _last_stream(self.finetuned, self.ft_blocks, batch)
            pt_off = adapters_off(self.finetuned) if self.adapter_mode else contextlib.nullcontext()
            with pt_off:
                x_pt, logits_pt = _last_stream(pt_model, self.pt_blocks, batch)
            vocab = min(logits_ft.shape[-1], logits_pt.shape[-1])
            x_pt = x_pt.to(x_ft.device)
            outputco = metrics.output_contribution(x_pt, x_ft).cpu().tolist()
            distance = (x_ft - x_pt).abs().sum(-1).cpu().tolist()
            kl = metrics.kl_divergence(logits_ft[..., :vocab], logits_pt[..., :vocab].to(logits_ft.device))
            for i, o, k, dist in zip(chunk, outputco, kl.cpu().tolist(), distance, strict=True):
                out[i] = OutputContribution(outputco=o, kl=k, distance=dist)
        return out


def _last_stream(model: nn.Module, blocks: nn.ModuleList, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw final residual stream [batch, d] (last block output, before the final norm) and logits
    [batch, vocab] at the last position of a left-padded batch, from the model's own forward."""
    seen = {}

    def grab(module, args, output):
        seen["x"] = (output[0] if isinstance(output, tuple) else output)[:, -1]

    handle = blocks[-1].register_forward_hook(grab)
    try:
        device = unwrap(model).get_input_embeddings().weight.device
        logits = model(
            **{k: v.to(device) for k, v in batch.items()}, use_cache=False, logits_to_keep=1
        ).logits
    finally:
        handle.remove()
    return seen["x"].float(), logits[:, -1].float()
