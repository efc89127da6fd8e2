"""Overhead of TuCo scoring over a plain fine-tuned forward pass (not a test: prints numbers).

    python benchmarks/overhead.py --model smollm2 --batch 8 --seq 128 --dtype auto
    python benchmarks/overhead.py --model tiny-llama
    python benchmarks/overhead.py --model PT_DIR --finetuned FT_DIR

Times, as the median of --runs runs after --warmup runs, (a) a plain FT forward with
``logits_to_keep=1`` and (b) ``pair.score`` on the same batch, and prints their ratio. The necessary
work of (b) is two runs of the blocks and one embedding: 2.0 is the floor.
"""

from __future__ import annotations

import argparse

import torch
from common import DTYPES, build_pair, choose_dtype, machine, median_time, random_batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="tiny-llama, smollm2, or a PT model path/id")
    parser.add_argument("--finetuned", default=None, help="FT model path/id (default: perturbed copy of PT)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: from the hardware")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    device = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    dtype = choose_dtype(args.dtype, device)
    pair = build_pair(args.model, args.finetuned, dtype)
    pair.pretrained.to(args.device)
    pair.finetuned.to(args.device)
    batch = random_batch(pair, args.batch, args.seq)

    @torch.inference_mode()
    def plain():
        pair.finetuned(**batch, use_cache=False, logits_to_keep=1)

    def score():
        pair.score(batch, batch_size=args.batch, progress=False)

    t_plain = median_time(plain, args.runs, args.warmup)
    t_score = median_time(score, args.runs, args.warmup)
    print(
        f"model={args.model} layers={pair.num_layers} batch={args.batch} seq={args.seq} "
        f"dtype={str(dtype).removeprefix('torch.')} device={args.device} {machine(device)}"
    )
    print(f"plain FT forward (logits_to_keep=1): {t_plain * 1000:8.1f} ms")
    print(f"pair.score:                          {t_score * 1000:8.1f} ms")
    print(f"ratio score / plain:                 {t_score / t_plain:8.3f}   (floor 2.0)")


if __name__ == "__main__":
    main()
