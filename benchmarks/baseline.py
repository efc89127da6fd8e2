"""tuco vs a naive implementation of the paper's Algorithm 1, on the same prompts (prints numbers).

    python benchmarks/baseline.py --model smollm2 --prompts 256

The naive version is what a user would write by hand: one prompt at a time, run the FT model while
storing every block's input stream and arguments, then run each PT block on the stored streams and
sum PTC/FTC at the last token. It is checked to give the same TuCo as ``pair.score``, then both are
timed on the same prompts: prompts/s of each and the speedup.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import DTYPES, build_pair, choose_dtype, machine, random_prompts

from tuco import ModelPair


@torch.inference_mode()
def naive_tuco(pair: ModelPair, ids: list[int]) -> float:
    """Algorithm 1 by hand for one prompt: store the FT streams, then run the PT blocks on them."""
    stored = []

    def keep(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        stored.append((x, args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}, output))

    handles = [b.register_forward_hook(keep, with_kwargs=True) for b in pair.ft_blocks]
    try:
        pair.finetuned(input_ids=torch.tensor([ids], device=pair.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    ptc_sum = ftc_sum = 0
    for block, (x, args, kwargs, ft_out) in zip(pair.pt_blocks, stored, strict=True):
        pt_out = block(x, *args, **kwargs)
        ptc_sum = ptc_sum + (pt_out - x)[0, -1].float()
        ftc_sum = ftc_sum + (ft_out - pt_out)[0, -1].float()
    f, p = ftc_sum.abs().sum(), ptc_sum.abs().sum()
    return (f / (p + f)).item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="tiny-llama, smollm2, or a PT model path/id")
    parser.add_argument("--finetuned", default=None)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: from the hardware")
    args = parser.parse_args()

    device = getattr(args, "device", "cuda" if torch.cuda.is_available() else "cpu")
    dtype = choose_dtype(args.dtype, device)
    pair = build_pair(args.model, args.finetuned, dtype)
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=gen).tolist()
    prompts = random_prompts(pair, lengths)

    naive_tuco(pair, prompts[0])  # warm-up
    pair.score(prompts[:2], progress=False)
    start = time.perf_counter()
    naive = [naive_tuco(pair, ids) for ids in prompts]
    t_naive = time.perf_counter() - start
    start = time.perf_counter()
    fast = [r.tuco for r in pair.score(prompts, batch_size=args.batch_size, progress=False)]
    t_fast = time.perf_counter() - start
    worst = max(abs(a - b) for a, b in zip(naive, fast, strict=True))

    print(
        f"model={args.model} prompts={args.prompts} lengths {args.min_len}-{args.max_len} "
        f"dtype={str(dtype).removeprefix('torch.')} {machine(device)}"
    )
    print(f"max |TuCo naive - TuCo tuco| = {worst:.2e}  (same result: {worst < 1e-2})")
    naive_rate = args.prompts / t_naive
    print(f"naive Algorithm 1 (one prompt at a time): {naive_rate:8.2f} prompts/s  ({t_naive:.1f} s)")
    print(
        f"tuco pair.score (batch {args.batch_size}, length-sorted): {args.prompts / t_fast:8.2f} prompts/s  "
        f"({t_fast:.1f} s)"
    )
    print(f"speedup: {t_naive / t_fast:.2f}x")


if __name__ == "__main__":
    main()
