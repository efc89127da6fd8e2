"""The cost of watching traffic from the side: ``POST /v1/tuco``'s scoring of prompt + response (one
forward pass, ``tuco.guard_api.score_items``) against generating the same response with TuCo on every
token (``generate_with_tuco``, what ``tuco serve`` does itself). Same pair, same tokens, one run.

    python benchmarks/guard_cost.py --model smollm2 --prompt 128 --response 32 --batch 8
"""

from __future__ import annotations

import argparse

import torch
from common import build_pair, choose_dtype, machine, median_time, random_prompts

from tuco.guard_api import score_items
from tuco.pair_base import PairBase
from tuco.request_body import ScoreItem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="a pair with a tokenizer (smollm2, or paths)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pair = build_pair(args.model, dtype=choose_dtype(args.dtype))
    PairBase.eos_ids = lambda self: set()  # every row runs to --response tokens: equal work both ways
    prompts = random_prompts(pair, [args.prompt] * args.batch)
    generations = pair.generate_with_tuco(prompts, max_new_tokens=args.response, batch_size=args.batch)
    items = [ScoreItem(p, g.token_ids) for p, g in zip(prompts, generations, strict=True)]

    def generate():
        pair.generate_with_tuco(prompts, max_new_tokens=args.response, batch_size=args.batch)

    def score():
        score_items(pair, items, layers=False)

    with torch.inference_mode():
        generating, scoring = median_time(generate, args.runs), median_time(score, args.runs)
    print(
        f"# {args.model}, {machine()} dtype={args.dtype}, "
        f"{args.batch} x ({args.prompt} + {args.response}) tokens"
    )
    print(f"generate_with_tuco (serve's own monitor): {generating:.2f} s")
    print(f"/v1/tuco on the same tokens (one pass):   {scoring:.2f} s  ({scoring / generating:.2f}x)")


if __name__ == "__main__":
    main()
