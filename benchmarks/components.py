"""Cost of the attention/MLP split and of per-head attribution over plain scoring (prints ratios).

    python benchmarks/components.py                       # llama-512 and smollm2, float32 and bf16
    python benchmarks/components.py --model llama-512 --dtypes float32

Times, interleaved within every run (median of --runs after --warmup), ``pair.score`` on the fast
path and on the general path (``fast=False``) without and with ``components=True`` and
``heads=True``, and prints components / score and heads / score on each path (goal for
components: <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import DTYPES, build_pair, choose_dtype, machine, median_time, random_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", default=["llama-512", "smollm2"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=DTYPES)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    print(f"device=cpu {machine()}")
    print("| model | dtype | path | score | components / score | heads / score |")
    print("|---|---|---|---|---|---|")
    for model in args.model:
        for name in args.dtypes:
            pair = build_pair(model, None, choose_dtype(name))
            batch = random_batch(pair, args.batch, args.seq)
            for fast in (True, False):
                calls = {
                    kind: (
                        lambda kw=kw, fast=fast, pair=pair, batch=batch: pair.score(
                            batch, batch_size=args.batch, progress=False, fast=fast, **kw
                        )
                    )
                    for kind, kw in (
                        ("score", {}),
                        ("components", {"components": True}),
                        ("heads", {"heads": True}),
                    )
                }
                times: dict[str, list[float]] = {k: [] for k in calls}
                for run in range(args.warmup + args.runs):
                    for kind, call in calls.items():
                        seconds = median_time(call, runs=1, warmup=0)
                        if run >= args.warmup:
                            times[kind].append(seconds)
                t = {k: statistics.median(v) for k, v in times.items()}
                path = "fast" if fast else "general"
                print(
                    f"| {model} | {name} | {path} | {t['score'] * 1000:.1f} ms | "
                    f"{t['components'] / t['score']:.3f} | {t['heads'] / t['score']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
