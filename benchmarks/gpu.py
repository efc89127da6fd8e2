"""One prepared script for a GPU machine (not a test): a Llama-2-7B-shaped random-init pair in
bf16 on one GPU, batch 16 x 512.

    python benchmarks/gpu.py            # about 2-4 minutes on one H100/H200 class GPU

Prints: the overhead ratio time(pair.score) / time(plain FT forward, logits_to_keep=1) on the fast
(last-token) and the general path, prompts/s
of scoring, peak GPU memory of the pair and of scoring, alpha=1 exactness, and FTC-alpha generation
tokens/s with the PT blocks' KV cache vs without (greedy outputs compared).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from common import IdsOnlyTokenizer, median_time

from tuco import ModelPair, find_blocks


@torch.no_grad()
def main() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--monitor-only", action="store_true", help="only the monitoring-cost part")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    gib = 2**30
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=args.layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    )
    start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        pt = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ft = copy.deepcopy(pt)
    for p in find_blocks(ft).parameters():  # a stand-in fine-tune: noise on the blocks
        p.add_(torch.randn_like(p) * 0.05 * p.float().std().to(p.dtype))
    pair = ModelPair(pt, ft, None)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() / gib
    print(f"built the pair in {time.perf_counter() - start:.0f} s; weights: {weights:.1f} GiB")
    if args.monitor_only:
        pair.tokenizer = IdsOnlyTokenizer()
        return monitoring_cost(pair, args.new_tokens)

    ids = torch.randint(3, 32000, (args.batch, args.seq), device="cuda")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    plain_logits = ft(**batch, use_cache=False).logits
    with pair.steer(1.0):
        hooked_logits = ft(**batch, use_cache=False).logits
    print(f"alpha=1 exactness: max |diff| = {(plain_logits - hooked_logits).abs().max().item():.2e}")
    del plain_logits, hooked_logits

    t_plain = median_time(lambda: ft(**batch, use_cache=False, logits_to_keep=1))
    for label, fast in (("fast path", True), ("general path", False)):
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated()
        t_score = median_time(
            lambda fast=fast: pair.score(batch, batch_size=args.batch, progress=False, fast=fast)
        )
        peak = torch.cuda.max_memory_allocated()
        print(
            f"batch {args.batch} x {args.seq}: plain FT forward {t_plain * 1000:.1f} ms, "
            f"pair.score ({label}) {t_score * 1000:.1f} ms, ratio {t_score / t_plain:.3f}"
        )
        print(f"  {args.batch / t_score:.1f} prompts/s, {args.batch * args.seq / t_score:.0f} tokens/s")
        print(
            f"  memory: pair {loaded / gib:.1f} GiB, peak during score {peak / gib:.1f} GiB "
            f"(+{(peak - loaded) / gib:.2f} GiB)"
        )

    prompts = [torch.randint(3, 32000, (128,)).tolist() for _ in range(4)]
    pair.tokenizer = IdsOnlyTokenizer()
    kw = dict(
        max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, progress=False, batch_size=4
    )
    out = {}
    for label, use_cache in (("with PT cache", True), ("no cache", False)):
        pair.generate(prompts, alpha=0.5, use_cache=use_cache, **(kw | {"max_new_tokens": 2}))
        torch.cuda.synchronize()
        start = time.perf_counter()
        out[label] = pair.generate(prompts, alpha=0.5, use_cache=use_cache, **kw)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rate = 4 * args.new_tokens / seconds
        print(f"alpha=0.5 generation {label:>14}: {rate:8.1f} tokens/s ({seconds:.1f} s)")
    print(f"identical greedy output: {out['with PT cache'] == out['no cache']}")
    monitoring_cost(pair, args.new_tokens)


def monitoring_cost(pair, new_tokens: int, batch: int = 16, length: int = 128) -> None:
    """Generation that reports TuCo (tuco serve's loop) vs plain generation, alpha = 1, greedy."""
    from tuco.pair_base import PairBase

    PairBase.eos_ids = lambda pair: set()  # every row runs to new_tokens: equal work for each way
    prompts = [torch.randint(3, 32000, (length,)).tolist() for _ in range(batch)]
    ways = {
        "plain generate (no TuCo)": lambda n: pair.generate(
            prompts, batch_size=batch, max_new_tokens=n, do_sample=False, eos_token_id=None, progress=False
        ),
        'monitor="prompt"': lambda n: pair.generate_with_tuco(
            prompts, batch_size=batch, max_new_tokens=n, monitor="prompt"
        ),
        'monitor="tokens"': lambda n: pair.generate_with_tuco(
            prompts, batch_size=batch, max_new_tokens=n, monitor="tokens"
        ),
    }
    times = {name: median_time(lambda run=run: run(new_tokens), runs=3) for name, run in ways.items()}
    base = times["plain generate (no TuCo)"]
    print(f"monitoring cost, batch {batch} x {length}, {new_tokens} new tokens, alpha 1 (median of 3):")
    for name, seconds in times.items():
        rate = batch * new_tokens / seconds
        print(f"  {name:>26}: {seconds:.2f} s, {rate:.0f} tokens/s, time / plain {seconds / base:.2f}")


if __name__ == "__main__":
    main()
