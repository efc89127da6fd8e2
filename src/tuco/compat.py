"""Checks that a pre-trained and a fine-tuned model can be paired, before any compute.

Each failure raises ``IncompatiblePairError`` naming the field and both values; things that are
allowed but worth knowing (added tokens) come back as notes.
"""

from __future__ import annotations

import torch.nn as nn

from .errors import ModelError

# Config fields that must agree for block l of one model to run on the stream of the other.
ARCHITECTURE_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "partial_rotary_factor",
    "rotary_pct",
    "position_embedding_type",
    "layer_types",
    "sliding_window",
    "hidden_act",
    "hidden_activation",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
)

TOKENIZER_PROBE = (
    "The quick brown fox jumps over the lazy dog. 1234567890 ÀÉÎõü 你好 👋\n"
    "  def f(x):\treturn x ** 2  # Ünïcödé, URLs https://example.org and [brackets]"
)


class IncompatiblePairError(ModelError, ValueError):
    """The two models (or tokenizers) cannot form a TuCo pair."""


def check_configs(pt_config, ft_config) -> list[str]:
    """Raise on the first mismatching architecture field; return notes on allowed differences."""
    pt, ft = pt_config.get_text_config(), ft_config.get_text_config()
    for field in ARCHITECTURE_FIELDS:
        a, b = getattr(pt, field, None), getattr(ft, field, None)
        if a != b:
            raise IncompatiblePairError(
                f"The models differ in `{field}`: pretrained={a!r}, finetuned={b!r}. TuCo pairs a model "
                "with its own fine-tune: both must share the architecture (same config apart from "
                "vocabulary and training settings)."
            )
    notes = []
    if ft.vocab_size != pt.vocab_size:
        notes.append(
            f"vocabulary sizes differ: pretrained={pt.vocab_size}, finetuned={ft.vocab_size} "
            f"({ft.vocab_size - pt.vocab_size:+d} tokens); embeddings come from the finetuned model."
        )
    return notes


def check_models(pt_model: nn.Module, ft_model: nn.Module, pt_blocks, ft_blocks) -> None:
    """Dtype and placement of every block pair (after the configs agree)."""
    for layer, (pt_block, ft_block) in enumerate(zip(pt_blocks, ft_blocks, strict=True)):
        pt_p, ft_p = next(pt_block.parameters(), None), next(ft_block.parameters(), None)
        if pt_p is None or ft_p is None:
            continue
        if pt_p.dtype != ft_p.dtype:
            raise IncompatiblePairError(
                f"The models differ in `dtype`: pretrained={pt_p.dtype}, finetuned={ft_p.dtype} "
                f"(block {layer}). Load both with the same dtype (e.g. dtype=torch.bfloat16)."
            )
        offloaded = hasattr(pt_block, "_hf_hook") or hasattr(ft_block, "_hf_hook")
        if pt_p.device != ft_p.device and not offloaded:
            raise IncompatiblePairError(
                f"The models differ in `device` at block {layer}: pretrained={pt_p.device}, "
                f"finetuned={ft_p.device}. Put block l of both models on the same device "
                "(ModelPair.from_pretrained does this for any device_map)."
            )


def check_tokenizers(pt_tokenizer, ft_tokenizer, use_finetuned_tokenizer: bool = False) -> list[str]:
    """Both tokenizers must give the same ids for a probe text, unless the caller opts out."""
    if pt_tokenizer is None or ft_tokenizer is None or pt_tokenizer is ft_tokenizer:
        return []
    pt_ids = pt_tokenizer(TOKENIZER_PROBE)["input_ids"]
    ft_ids = ft_tokenizer(TOKENIZER_PROBE)["input_ids"]
    if pt_ids == ft_ids:
        notes = []
    elif use_finetuned_tokenizer:
        notes = ["the tokenizers differ on a probe text; the fine-tuned tokenizer is used for both models."]
    else:
        first = next(
            (i for i, (a, b) in enumerate(zip(pt_ids, ft_ids, strict=False)) if a != b),
            min(len(pt_ids), len(ft_ids)),
        )
        raise IncompatiblePairError(
            f"The models' tokenizers differ: on a probe text they give different ids from position {first} "
            f"(pretrained {pt_ids[first : first + 5]}, finetuned {ft_ids[first : first + 5]}). "
            "Pass use_finetuned_tokenizer=True to tokenize for both models with the fine-tuned tokenizer."
        )
    if len(ft_tokenizer) > len(pt_tokenizer):
        notes.append(f"the fine-tuned tokenizer adds {len(ft_tokenizer) - len(pt_tokenizer)} tokens.")
    return notes
