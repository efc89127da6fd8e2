"""Overhead of TuCo scoring over a plain fine-tuned forward pass (not a test: prints numbers).

    python benchmarks/overhead.py                          # llama-512 and smollm2, float32 and bf16
    python benchmarks/overhead.py --model llama-512 --dtypes float32 --scaling
    python benchmarks/overhead.py --model PT_DIR --finetuned FT_DIR --dtypes auto

Times, as the median of --runs runs after --warmup runs, (a) a plain FT forward with
``logits_to_keep=1``, (b) ``pair.score`` on the fast path (alpha = 1: each PT block at the last
position only, with keys/values over every position) and (c) ``pair.score(fast=False)``, the
general path (every PT block on every position), and prints (b)/(a) and (c)/(a) side by side.
The general path's floor is 2.0; the fast path's is 1 + the PT blocks' key/value path.
``--scaling`` adds the ratios for sequence lengths 64..2048 at batch 1 and 8.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import DTYPES, build_pair, choose_dtype, machine, median_time, random_batch

SCALING_SEQS = (64, 128, 256, 512, 1024, 2048)


def ratios(pair, batch: dict, runs: int, warmup: int) -> tuple[float, float, float]:
    """(plain ms, fast / plain, general / plain) on one batch. The three are timed in turn within
    every run (interleaved), so that a slow spell of a shared machine hits all three alike."""
    size = batch["input_ids"].shape[0]

    @torch.inference_mode()
    def plain():
        pair.finetuned(**batch, use_cache=False, logits_to_keep=1)

    calls = {
        "plain": plain,
        "fast": lambda: pair.score(batch, batch_size=size, progress=False),
        "general": lambda: pair.score(batch, batch_size=size, progress=False, fast=False),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for run in range(warmup + runs):
        for name, call in calls.items():
            seconds = median_time(call, runs=1, warmup=0)
            if run >= warmup:
                times[name].append(seconds)
    t = {name: statistics.median(values) for name, values in times.items()}
    return t["plain"] * 1000, t["fast"] / t["plain"], t["general"] / t["plain"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["llama-512", "llama-512-v256", "smollm2"],
        help="llama-512, llama-512-v256, tiny-llama, smollm2, or a path",
    )
    parser.add_argument("--finetuned", default=None, help="FT model path/id (default: perturbed copy of PT)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--scaling", action="store_true", help="also ratio vs sequence length and batch")
    args = parser.parse_args()

    print(f"device={args.device} {machine(args.device)}")
    print("| model | dtype | batch x seq | plain FT forward | fast path / plain | general path / plain |")
    print("|---|---|---|---|---|---|")
    for model in args.model:
        for name in args.dtypes:
            dtype = choose_dtype(name, args.device)
            pair = build_pair(model, args.finetuned, dtype)
            pair.pretrained.to(args.device)
            pair.finetuned.to(args.device)
            shapes = [(args.batch, args.seq)]
            if args.scaling:
                shapes += [(b, s) for b in (1, 8) for s in SCALING_SEQS if (b, s) != (args.batch, args.seq)]
            for b, s in shapes:
                ms, fast, general = ratios(pair, random_batch(pair, b, s), args.runs, args.warmup)
                label = str(dtype).removeprefix("torch.")
                print(
                    f"| {model} | {label} | {b} x {s} | {ms:.1f} ms | {fast:.3f} | {general:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
