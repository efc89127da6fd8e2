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

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch

from . import baselines, decoding, inputs
from .decoding import Generation, TokenEvent
from .decompose import pt_blocks_needed
from .errors import Alpha, alpha_text, check_alpha, check_choice, check_int
from .inputs import Prompts, Side
from .loading import load_models
from .pair_base import PairBase
from .results import OutputContribution, TucoResult, from_record
from .sampling import Sampling

log = logging.getLogger("tuco")


def checkpoint_identity(pretrained: str, finetuned: str | None, adapter: str | None) -> str:
    """A pair's name from its checkpoints as given: the fine-tuned one, or the base and its adapter."""
    return finetuned or f"{pretrained} + adapter {adapter}"


class ModelPair(PairBase):
    """A pre-trained (PT) model and its fine-tuned (FT) version, with one tokenizer, and what TuCo
    does with them. Construction (two models in memory, or PEFT mode) and the pair's primitive
    operations (``encode``, ``steer``, batching): ``tuco.pair_base.PairBase``."""

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
        prompt_format: inputs.ChatFormat | None = None,
        **model_kwargs,
    ) -> ModelPair:
        """Load a pair from hub ids or local directories (the same ``from_pretrained`` path): give
        ``finetuned`` (a full model) or ``adapter`` (a PEFT LoRA adapter on ``pretrained``).
        ``dtype="auto"`` (the default, as on the command line) is the fastest dtype the hardware
        has (``tuco.hardware``); ``batch_invariant=True`` makes it float32 (what ``tuco serve``
        and ``tuco calibrate`` use); ``dtype=None`` keeps transformers' default (the checkpoint's).
        How ``device_map`` places both models alike: ``tuco.loading.load_models``;
        ``prompt_format``: see ``PairBase``. The dtype chosen, and why, is logged and kept in
        ``pair.dtype_reason``."""
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
            prompt_format=prompt_format,
            dtype_reason=why,
        )
        pair.identity = checkpoint_identity(pretrained, finetuned, adapter)  # tuco.models.load: a better one
        return pair

    # ------------------------------------------------------------------ TuCo
    @torch.inference_mode()
    def score(
        self,
        prompts: Prompts,
        *,
        alpha: Alpha = 1.0,
        batch_size: int = 8,
        per_token: bool = False,
        norm: Literal["l1", "l2"] = "l1",
        padding_side: Side | None = None,
        progress: bool | None = None,
        fast: bool = True,
        components: bool = False,
        heads: bool = False,
        vectors: bool = False,
    ) -> list[TucoResult]:
        """TuCo of every prompt at its last real token, one ``TucoResult`` each, in input order.

        Cost: one FT forward without the unembedding, plus the PT blocks on the same inputs: at
        alpha = 1 without ``per_token`` (and ``fast``), each PT block runs at the last position only,
        with its keys and values over every position (``tuco.lastpos``: about 1.1-1.3x one forward);
        otherwise every PT block runs on every position (about 2x).
        ``per_token=True`` also gives TuCo at every position (keeps [batch, seq, d] sums).
        ``norm="l2"`` uses L2 norms throughout instead of the paper's L1.
        ``alpha != 1`` measures along the FTC-alpha model's stream (x_{l+1} = x_l + PTC_l + alpha * FTC_l);
        the FTC_l summed are the blocks' own differences there, not multiplied by alpha;
        ``alpha={"attn": a, "mlp": b}`` scales the blocks' attention and MLP sides apart.
        ``components=True`` splits every block's PTC and FTC into its attention and MLP sides
        (``tuco.sublayers``: ``ptc_attn_layers`` ... ``tuco_attn``, ``tuco_mlp`` and ``sum_check``
        on each result; with ``per_token``, ``tuco_attn_tokens`` and ``tuco_mlp_tokens``), and
        ``heads=True`` the attention side per head at the last token (``ptc_heads``, ``ftc_heads``
        [L][H], the output projection's bias apart), where that split is exact.
        ``vectors=True`` keeps each prompt's PTC_l and FTC_l themselves on its result
        (``result.vectors``: [rows, L, d] each, float32, on the CPU; rows = 1, or every real token
        with ``per_token``), for ``tuco.vectors``.
        """
        check_choice(norm, "norm", ("l1", "l2"))
        reads = "last" if fast and not per_token else "all"
        fast_path = pt_blocks_needed(check_alpha(alpha), reads) == "last"
        side = "left" if fast_path else self.side(padding_side)  # fast path: last tokens at -1

        def compute(batch: dict[str, torch.Tensor]) -> list[TucoResult]:
            with self.steered(alpha, reads, components=components, heads=heads) as dec:
                last = inputs.last_index(batch["attention_mask"])
                rec = dec.record(last, per_token, p=int(norm[1]), token_vectors=vectors)
                self.body(**self.body_inputs(batch), use_cache=False)
            return from_record(rec, batch["attention_mask"], vectors)

        return self.map_batches(self.encode(prompts), batch_size, side, "TuCo", progress, compute)

    # ------------------------------------------------------------------ FTC-alpha model
    @torch.inference_mode()
    def logits(
        self, prompts: Prompts, alpha: Alpha = 1.0, *, padding_side: Side | None = None
    ) -> torch.Tensor:
        """Float32 logits [batch, seq, vocab] of the FTC-alpha model, prompts in input order,
        padded on ``padding_side`` (default: the tokenizer's). alpha = 1 is the FT model itself."""
        ids = self.encode(prompts)
        self.check_prompts(ids)
        batch = inputs.pad(ids, self.pad_id, self.side(padding_side))
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with self.steered(alpha):
            return self.finetuned(**batch, use_cache=False).logits.float()

    @torch.inference_mode()
    def token_logprobs(
        self, prompts: Prompts, alpha: Alpha = 1.0, *, top: int = 0, batch_size: int = 8
    ) -> list[list[tuple[float, list[tuple[int, float]]] | None]]:
        """Each prompt token's log-probability given the tokens before it, under the FTC-alpha model
        (float32, from ``logits``), with the ``top`` most likely tokens there as (id, logprob); the
        first token has none (None). One list per prompt, in input order."""
        check_int(top, "top", 0)
        ids = self.encode(prompts)

        def compute(batch: dict[str, torch.Tensor]) -> list[list]:
            with self.steered(alpha):
                logp = torch.log_softmax(self.finetuned(**batch, use_cache=False).logits.float(), -1)
            rows = []
            for row, mask, lp in zip(batch["input_ids"], batch["attention_mask"], logp, strict=True):
                n = int(mask.sum())
                chosen = lp[: n - 1].gather(-1, row[1:n, None])[:, 0].tolist()
                best = torch.topk(lp[: n - 1], top) if top else None
                alternatives = (
                    [
                        list(zip(i, v, strict=True))
                        for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
                    ]
                    if best is not None
                    else [[] for _ in chosen]
                )
                rows.append([None, *zip(chosen, alternatives, strict=True)])
            return rows

        return self.map_batches(ids, batch_size, "right", f"logprobs a={alpha_text(alpha)}", None, compute)

    @torch.inference_mode()
    def next_token_probs(
        self,
        prompts: Prompts,
        alpha: Alpha = 1.0,
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
            with self.steered(alpha):
                logits = self.finetuned(**batch, use_cache=False, logits_to_keep=1).logits[:, -1]
            probs = torch.softmax(logits.float(), dim=-1)
            return list((probs if token_ids is None else probs[:, token_ids]).cpu())

        rows: list[torch.Tensor] = self.map_batches(
            self.encode(prompts), batch_size, "left", f"next token a={alpha_text(alpha)}", progress, compute
        )
        return torch.stack(rows) if rows else torch.empty(0)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Prompts,
        alpha: Alpha = 1.0,
        *,
        batch_size: int = 8,
        progress: bool | None = None,
        **options: Any,
    ) -> list[str]:
        """Generated text (new tokens only) of the FTC-alpha model for every prompt, through
        transformers' ``generate`` with KV caches for both the FT and the PT blocks. ``options``:
        ``Sampling``'s fields (``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``, ``top_k``,
        ``stop``), translated by ``Sampling.generate_kwargs``; with ``max_new_tokens`` alone, the
        model's generation config decides how to sample; any other keyword goes to ``generate`` as
        it is (``num_beams``, ``do_sample``, ...). A prompt plus ``max_new_tokens`` longer than the
        model's context is refused (ValueError)."""
        given = {k: options.pop(k) for k in Sampling.field_names() & options.keys()}
        if given.pop("seed", None) is not None:
            raise ValueError(
                "seed: transformers' generate samples from torch's global generator (torch.manual_seed); "
                "generate_with_tuco seeds each prompt"
            )
        if given.keys() - {"max_new_tokens"}:
            options = Sampling(**given).generate_kwargs(self.tokenizer) | options
        else:
            options |= given
        options.setdefault("pad_token_id", self.pad_id)
        new_tokens = options.get("max_new_tokens")
        if new_tokens is None:
            new_tokens = getattr(self.finetuned.generation_config, "max_new_tokens", None) or 0
        check_int(new_tokens, "max_new_tokens", 0 if "max_new_tokens" not in options else 1)

        def compute(batch: dict[str, torch.Tensor]) -> list[str]:
            batch.pop("position_ids")  # generate derives them from the attention mask
            with self.steered(alpha):
                tokens = self.finetuned.generate(**batch, **options)
            return self.tokenizer.batch_decode(
                tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
            )

        return self.map_batches(
            self.encode(prompts),
            batch_size,
            "left",
            f"generate a={alpha_text(alpha)}",
            progress,
            compute,
            new_tokens,
        )

    def stream_with_tuco(
        self,
        prompts: Prompts,
        alpha: Alpha = 1.0,
        *,
        monitor: Literal["tokens", "prompt"] = "tokens",
        norm: Literal["l1", "l2"] = "l1",
        batch_size: int = 8,
        **sampling: Any,
    ) -> Iterator[TokenEvent]:
        """Generate with the FTC-alpha model and report TuCo as it goes: one ``TokenEvent`` per new
        token (its text and TuCo; the prompt's TuCo on a prompt's first), ``batch_size`` prompts
        decoded together, longest first (``event.index``: the prompt's place in the input).
        ``sampling``: the fields of ``tuco.sampling.Sampling``
        (``max_new_tokens``, ``temperature`` (0: greedy), ``top_p``, ``top_k``, ``seed``, ``stop``).
        ``monitor="prompt"``: the prompt's TuCo only (at alpha = 1 decoding skips the PT blocks).
        Same forward passes as generation: see ``tuco.decoding`` for where each TuCo is read."""
        ids = self.encode(prompts)
        return decoding.stream(
            self, ids, Sampling(**sampling), alpha=alpha, monitor=monitor, norm=norm, batch_size=batch_size
        )

    def generate_with_tuco(
        self,
        prompts: Prompts,
        alpha: Alpha = 1.0,
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
        return decoding.generate(self, ids, Sampling(**sampling), **options)

    def decode(
        self,
        ids: list[list[int]],
        samplings: Sequence[Sampling],
        *,
        alpha: Alpha = 1.0,
        monitor: str = "tokens",
        norm: str = "l1",
        cancelled: Callable[[int], bool] | None = None,
    ) -> Iterator[list[TokenEvent]]:
        """One batch of prompts (token ids) decoded together, each with its own ``Sampling``: one list
        of ``TokenEvent`` per step (``tuco.decoding.decode``; what ``tuco serve``'s engine runs)."""
        return decoding.decode(
            self, ids, samplings, alpha=alpha, monitor=monitor, norm=norm, cancelled=cancelled
        )

    # ------------------------------------------------------------------ output-only baselines
    @torch.inference_mode()
    def output_contribution(
        self, prompts: Prompts, *, batch_size: int = 8, progress: bool | None = None
    ) -> list[OutputContribution]:
        """OutputCo and KL(p_FT || p_PT) at the last prompt token, from each model's own forward.

        KL is taken over the vocabulary both models share (the first min(V_PT, V_FT) ids).
        """
        compute = baselines.output_contribution_of(self)
        return self.map_batches(self.encode(prompts), batch_size, "left", "OutputCo", progress, compute)
