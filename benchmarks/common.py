"""Shared by the benchmark scripts: the pairs they run on, and timing."""

from __future__ import annotations

import statistics
import time

import torch

from tuco import ModelPair
from tuco.hardware import cpu_capability, resolve_dtype
from tuco.testing import perturbed_copy, tiny_model

DTYPES = ["auto", "bfloat16", "float16", "float32"]


def choose_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """--dtype: "auto" follows tuco's hardware rule (bf16 on CPU only where it is native)."""
    dtype, _ = resolve_dtype(name, device, torch.bfloat16)
    return dtype


def machine(device: str = "cpu") -> str:
    """The line every benchmark prints beside its figures: numbers from different machines differ."""
    gpu = f" gpu={torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return f"cpu={cpu_capability()} threads={torch.get_num_threads()} torch={torch.__version__}{gpu}"


def llama_512(vocab_size: int = 32000):
    return tiny_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
    )


def build_pair(name: str, finetuned: str | None = None, dtype: torch.dtype = torch.bfloat16) -> ModelPair:
    """tiny-llama (random, 8 blocks, d=256), llama-512 (random, 8 blocks, d=512, GQA 8/4 heads, MLP
    1376, vocabulary 32000), llama-512-v256 (the same with a vocabulary of 256), smollm2 (real, vs a
    copy with perturbed blocks), or paths."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "llama-512":
        pt, tok = llama_512(), None
    elif name == "llama-512-v256":  # a tiny vocabulary: the unembedding hides none of the blocks' cost
        pt, tok = llama_512(vocab_size=256), None
    elif name == "tiny-llama":
        pt, tok = (
            tiny_model("llama", hidden_size=256, intermediate_size=768, num_hidden_layers=8, head_dim=64),
            None,
        )
    else:
        if name == "smollm2":
            from tuco.embedded import smollm2_dir

            name = str(smollm2_dir())
        pt = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(name)
    if finetuned is None:  # a stand-in fine-tune: the same model with perturbed blocks
        ft = perturbed_copy(pt, scale=0.05)
    else:
        ft = AutoModelForCausalLM.from_pretrained(finetuned, dtype=torch.float32).eval()
    return ModelPair(pt.to(dtype), ft.to(dtype), tok)


def median_time(fn, runs: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_prompts(pair: ModelPair, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Token-id prompts of the given lengths, drawn uniformly from the vocabulary (ids 0-2 left out)."""
    vocab = pair.finetuned.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]


def random_batch(pair: ModelPair, batch: int, seq: int, seed: int = 0) -> dict:
    vocab = pair.finetuned.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed)).to(pair.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class IdsOnlyTokenizer:
    """Stand-in tokenizer for random-init pairs given token ids: generated ids come back as text."""

    pad_token_id, eos_token_id, padding_side, chat_template = 0, None, "left", None

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) for row in rows]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def load_parser(doc: str, dtype: str = "auto"):
    """The options both serving benchmarks share: the pair, its dtype, the clients and their tokens."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="demo")
    parser.add_argument("--dtype", default=dtype)
    parser.add_argument("--clients", type=int, default=32, help="streaming clients of each load")
    parser.add_argument("--max-tokens", type=int, default=32, help="new tokens each client asks for")
    return parser
