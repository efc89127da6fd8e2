"""FTC-alpha generation with the PT blocks' own KV cache vs without any cache (prints numbers).

    python benchmarks/generation.py --model smollm2 --new-tokens 64 --alpha 0.5

Greedy generation of --new-tokens tokens for --batch prompts at alpha != 1, timed with caches
(tuco's default: the FT cache from transformers, a twin cache for the PT blocks) and with
use_cache=False; checks that both produce identical tokens and prints tokens/s and the speedup.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import DTYPES, IdsOnlyTokenizer, build_pair, choose_dtype, machine, random_prompts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--finetuned", default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: from the hardware")
    args = parser.parse_args()

    device = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    dtype = choose_dtype(args.dtype, device)
    pair = build_pair(args.model, args.finetuned, dtype)
    prompts = random_prompts(pair, [args.prompt_len] * args.batch)
    # eos_token_id=None: exactly --new-tokens tokens each, whatever the model says
    kw = dict(
        max_new_tokens=args.new_tokens,
        do_sample=False,
        eos_token_id=None,
        progress=False,
        batch_size=args.batch,
    )
    pair.tokenizer = pair.tokenizer or IdsOnlyTokenizer()
    pair.generate(prompts[:1], alpha=args.alpha, **(kw | {"max_new_tokens": 2}))  # warm-up

    timings, outputs = {}, {}
    for label, use_cache in (("with PT cache", True), ("no cache", False)):
        start = time.perf_counter()
        outputs[label] = pair.generate(prompts, alpha=args.alpha, use_cache=use_cache, **kw)
        timings[label] = time.perf_counter() - start
    # reference: the plain FT model's own cached vs cache-free greedy output (bf16 rounding differs
    # between the two paths, so a few near-ties flip even without tuco in the loop)
    plain = [pair.generate(prompts, alpha=1.0, use_cache=c, **kw) for c in (True, False)]
    tokens = args.batch * args.new_tokens
    print(
        f"model={args.model} alpha={args.alpha} batch={args.batch} prompt={args.prompt_len} "
        f"new={args.new_tokens} dtype={str(dtype).removeprefix('torch.')} {machine(device)}"
    )
    same = sum(a == b for a, b in zip(outputs["with PT cache"], outputs["no cache"], strict=True))
    same_plain = sum(a == b for a, b in zip(*plain, strict=True))
    print(
        f"identical greedy output, cached vs cache-free: {same}/{args.batch} prompts "
        f"(plain FT model, alpha=1: {same_plain}/{args.batch})"
    )
    for label, seconds in timings.items():
        print(f"{label:>14}: {tokens / seconds:8.1f} tokens/s  ({seconds:.1f} s)")
    print(f"speedup of the cache: {timings['no cache'] / timings['with PT cache']:.2f}x")


if __name__ == "__main__":
    main()
