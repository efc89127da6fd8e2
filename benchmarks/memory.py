"""Peak memory of ``pair.score`` vs batch and sequence length, and two-model vs LoRA-adapter mode.

    python benchmarks/memory.py --model smollm2 --plot docs/memory.png

Every measurement runs in a fresh subprocess. On CUDA it reads torch.cuda.max_memory_allocated;
on CPU it samples the process's resident memory every 2 ms (psutil) while the step runs. Printed:
(1) the extra peak memory of score over the loaded models, per batch x seq, with its ratio to
batch x seq x d x 4 bytes (float32 activations) -- constant when memory grows with batch x seq x d,
not with layers; (2) the memory of the loaded pair plus one score, two-model vs adapter mode.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import torch
from common import DTYPES, choose_dtype, machine


def _peak_during(fn) -> tuple[int, int]:
    """(memory before, peak memory while fn runs), bytes."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return before, torch.cuda.max_memory_allocated()
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak, running = [before], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        fn()
    finally:
        running[0] = False
        thread.join()
    return before, max(peak[0], process.memory_info().rss)


def child(spec: dict) -> dict:
    """One measurement (run in a subprocess)."""
    from common import random_batch
    from transformers import AutoModelForCausalLM

    from tuco import ModelPair

    dtype = getattr(torch, spec["dtype"])
    path = spec["model"]
    if path == "smollm2":
        from tuco.embedded import smollm2_dir

        path = smollm2_dir()

    runtime = _resident()  # the process before any model: interpreter, torch, transformers

    def load():  # straight to the dtype, so that loading leaves no freed memory behind to reuse
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()

    if spec["mode"] == "adapter":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False)
        # as ModelPair.from_pretrained(adapter=...) loads it: the adapter in the model's dtype
        peft_model = get_peft_model(load(), config, autocast_adapter_dtype=False)
        pair = ModelPair(finetuned=peft_model.eval(), tokenizer=None)
    else:  # the FT weights' values do not matter for memory: a second copy of the same checkpoint
        pair = ModelPair(load(), load(), None)
    if torch.cuda.is_available():
        pair.finetuned.cuda()
        if pair.pretrained is not None:
            pair.pretrained.cuda()
    import gc

    gc.collect()
    batch = random_batch(pair, spec["batch"], spec["seq"])
    # no warm-up: on CPU a first run's allocations are what shows in resident memory
    before, peak = _peak_during(lambda: pair.score(batch, batch_size=spec["batch"], progress=False))
    d = pair.finetuned.get_input_embeddings().weight.shape[1]
    models = [m for m in (pair.finetuned, pair.pretrained) if m is not None]
    tensors = {
        t.data_ptr(): t.numel() * t.element_size() for m in models for t in (*m.parameters(), *m.buffers())
    }
    return {
        **spec,
        "loaded": before,
        "peak": peak,
        "extra": peak - before,
        "d": d,
        "layers": pair.num_layers,
        "models_and_score": peak - runtime,
        "weights": sum(tensors.values()),
    }


def _resident() -> int:
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def measure(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="smollm2 or a model path (both sides load it)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: from the hardware")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seqs", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--plot", help="write a PNG of extra peak memory vs batch x seq")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    mib = 2**20
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = str(choose_dtype(args.dtype, device)).removeprefix("torch.")
    base = {"model": args.model, "dtype": args.dtype, "mode": "two-model"}
    print(f"model={args.model} dtype={args.dtype} device={device} {machine(device)}")
    print(f"{'batch':>5} {'seq':>5} {'extra peak MiB':>15} {'extra / (b*s*d*4)':>18}")
    rows = []
    for b in args.batches:
        for s in args.seqs:
            r = measure(base | {"batch": b, "seq": s})
            rows.append(r)
            print(f"{b:>5} {s:>5} {r['extra'] / mib:>15.1f} {r['extra'] / (b * s * r['d'] * 4):>18.2f}")
    two = measure(base | {"batch": 8, "seq": 128})
    lora = measure(base | {"batch": 8, "seq": 128, "mode": "adapter"})
    for label, r in (("two-model mode", two), ("adapter mode  ", lora)):
        print(
            f"{label}: weights {r['weights'] / mib:7.1f} MiB + score's peak {r['extra'] / mib:6.1f} MiB; "
            f"resident growth from loading to peak {r['models_and_score'] / mib:7.1f} MiB"
        )
    tensors = (lora["weights"] + lora["extra"]) / (two["weights"] + two["extra"])
    resident = lora["models_and_score"] / two["models_and_score"]
    print(
        f"adapter / two-model: {tensors:.2f} (weights + score peak), "
        f"{resident:.2f} (resident memory, includes loader leftovers)"
    )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for b in args.batches:
            points = [r for r in rows if r["batch"] == b]
            ax.plot(
                [r["seq"] for r in points], [r["extra"] / mib for r in points], marker="o", label=f"batch {b}"
            )
        ax.set(
            xlabel="sequence length",
            ylabel="extra peak memory of score (MiB)",
            xscale="log",
            yscale="log",
            title=f"{args.model}, {args.dtype}",
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot -> {args.plot}")


if __name__ == "__main__":
    main()
