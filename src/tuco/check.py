"""``tuco check``: is this pair usable, and is the decomposition exact on it?"""

from __future__ import annotations

import torch

from . import inputs
from .pair import ModelPair

PROBES = [
    "The capital of France is",
    "def fibonacci(n):",
    [{"role": "user", "content": "Give me three tips for staying focused."}],
]


@torch.inference_mode()
def check_pair(pair: ModelPair, tolerance: float = 1e-6) -> tuple[bool, list[str]]:
    """Compatibility already passed (the pair exists); now alpha = 1 exactness and x_L rebuild on
    probe prompts. Returns (ok, report lines)."""
    lines = [f"pair: {pair.num_layers} blocks, {'PEFT adapter' if pair.adapter_mode else 'two models'}"]
    lines += [f"note: {n}" for n in pair.notes]
    probes = PROBES if pair.formats_chats else PROBES[:2]
    batch = inputs.pad(pair.encode(probes), inputs.pad_id(pair.tokenizer), "right")
    batch = {k: v.to(pair.device) for k, v in batch.items()}
    mask = batch["attention_mask"].bool()
    plain = pair.finetuned(**batch, use_cache=False).logits.float()
    with pair.steer(1.0) as dec:
        rec = dec.record(inputs.last_index(batch["attention_mask"]))
        hooked = pair.finetuned(**batch, use_cache=False).logits.float()
    diff = (hooked - plain)[mask].abs().max().item()
    exact = diff <= tolerance
    lines.append(
        f"alpha=1 exactness: max |logits - plain FT logits| = {diff:.2e} ({'ok' if exact else 'FAILED'})"
    )
    finite = bool(torch.isfinite(rec.ptc_sum).all() and torch.isfinite(rec.ftc_sum).all())
    lines.append(
        f"components finite: {'ok' if finite else 'FAILED (overflow: try --dtype bfloat16 or float32)'}"
    )
    tucos = [f"{r.tuco:.4f}" for r in pair.score(probes, progress=False)]
    lines.append(f"TuCo of the probes: {', '.join(tucos)}")
    ok = exact and finite
    lines.append("verdict: OK" if ok else "verdict: FAILED")
    return ok, lines
