"""Tiny offline model pairs for tests, examples and benchmarks: no hub, built in seconds.

>>> tok = byte_tokenizer()
>>> pt = tiny_model("llama")
>>> ft = perturbed_copy(pt, scale=0.05)        # differs from pt in its blocks only
>>> pair = ModelPair(pt, ft, tok)
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .blocks import find_blocks

# Small but real shapes: grouped-query attention, several blocks, short sliding windows.
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4)
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_COMMON, num_key_value_heads=2, head_dim=16),
    "mistral": dict(_COMMON, num_key_value_heads=2, head_dim=16, sliding_window=5),
    "qwen2": dict(_COMMON, num_key_value_heads=2),
    "qwen3": dict(_COMMON, num_key_value_heads=2, head_dim=16),
    "gemma": dict(_COMMON, num_key_value_heads=1, head_dim=16),
    "gemma2": dict(_COMMON, num_key_value_heads=2, head_dim=16, sliding_window=5),
    "gemma3_text": dict(
        _COMMON,
        num_hidden_layers=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=5,
        layer_types=["sliding_attention", "full_attention"] * 2,
    ),
    "phi3": dict(_COMMON, num_key_value_heads=2),
    "olmo2": dict(_COMMON, num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_layer=3, n_head=4, n_positions=256),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4),
    "opt": dict(
        hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4, word_embed_proj_dim=64
    ),
}
ARCHITECTURES = tuple(TINY_CONFIGS)  # dense families: every test of the core runs on each
# Families beyond dense decoders: mixture of experts, hybrid convolution + attention, a multimodal
# wrapper (Gemma-3 with a vision tower, given text only).
_TEXT = dict(_COMMON, num_key_value_heads=2, head_dim=16)
TINY_CONFIGS |= {
    "mixtral": dict(_TEXT, num_local_experts=4, num_experts_per_tok=2),
    "qwen3_moe": dict(_TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "lfm2": dict(
        _COMMON, num_key_value_heads=2, layer_types=["conv", "full_attention", "conv"], block_ff_dim=128
    ),
    "gemma3": dict(
        text_config=dict(
            _TEXT,
            num_hidden_layers=4,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention"] * 2,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28
        ),
        mm_tokens_per_image=4,
        boi_token_index=3,
        eoi_token_index=4,
        image_token_index=5,
    ),
}
MORE_ARCHITECTURES = ("mixtral", "qwen3_moe", "lfm2", "gemma3")

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_tokenizer():
    """A byte-level tokenizer (3 special tokens + 256 bytes, ids 0-258) with BOS and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {PAD: 0, BOS: 1, EOS: 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=CHAT_TEMPLATE
    )


def tiny_model(model_type: str = "llama", seed: int = 0, vocab_size: int = 272, **overrides) -> nn.Module:
    """A random-initialised causal LM of ``model_type`` (see ``TINY_CONFIGS``), float32, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(ARCHITECTURES)}")
    kwargs = dict(TINY_CONFIGS[model_type], pad_token_id=0, bos_token_id=1, eos_token_id=2, **overrides)
    if "text_config" in kwargs:  # multimodal wrapper: the vocabulary is the text model's
        kwargs["text_config"] = dict(kwargs["text_config"], vocab_size=vocab_size, pad_token_id=0)
    else:
        kwargs["vocab_size"] = vocab_size
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@torch.no_grad()
def perturbed_copy(model: nn.Module, scale: float = 0.05, seed: int = 1) -> nn.Module:
    """A copy of ``model`` whose decoder blocks get Gaussian noise (relative ``scale``) added to
    every weight; embeddings, final norm and head stay identical (a stand-in for a fine-tune)."""
    ft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for p in find_blocks(ft).parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        p.add_((noise * scale * (p.float().std().cpu() + 1e-3)).to(p.device, p.dtype))
    return ft
