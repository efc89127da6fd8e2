"""Beyond the paper: where the FTC lives inside the blocks, attention vs MLP by layer, for chat,
harmful and web-text prompts (``score(components=True)``, and per head where that split is exact).

Offline: the demo recipe's held-out benign requests (chat) and harmful requests (harmful) through
the chat template, and Gutenberg Shakespeare windows as raw text (web text's stand-in).
"""

from __future__ import annotations

import numpy as np

from ..pair import ModelPair
from ..plots import head_maps, stacked_sides
from ..sublayers import SublayerError
from ..tables import markdown_table
from .common import RunDirectory, as_prompt, mean
from .request_sets import standin_benign
from .web_vs_chat import web_and_chat_prompts

GROUPS = ("chat", "harmful", "web")


def components(
    pair: ModelPair,
    out: RunDirectory,
    requests: list[dict],
    limit: int = 40,
    system: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> str:
    web = web_and_chat_prompts(pair.tokenizer, limit, seed)[0]["web: Shakespeare"]  # as in docs/RESULTS
    texts = {
        "chat": [r["prompt"] for r in standin_benign(limit)],
        "harmful": [r["prompt"] for r in requests[:limit]],
        "web": web,
    }
    items = [
        dict(
            id=f"{group}/{i}", group=group, text=t, prompt=t if group == "web" else as_prompt(pair, t, system)
        )
        for group, prompts in texts.items()
        for i, t in enumerate(prompts)
    ]
    heads = _heads_exact(pair, items[0]["prompt"])

    def compute(batch: list[dict]) -> list[dict]:
        scores = pair.score(
            [it["prompt"] for it in batch], batch_size=batch_size, components=True, heads=heads
        )
        return [
            dict(id=it["id"], group=it["group"], prompt=it["text"])
            | {k: v for k, v in s.to_dict().items() if v is not None}
            for it, s in zip(batch, scores, strict=True)
        ]

    records = out.step("scores", items, compute, batch_size, desc="components")
    rows, metrics = [], {"heads": heads}
    for group in GROUPS:
        chosen = [r for r in records if r["group"] == group]
        attn = np.mean([r["ftc_attn_layers"] for r in chosen], axis=0)
        mlp = np.mean([r["ftc_mlp_layers"] for r in chosen], axis=0)
        share = float(attn.sum() / (attn.sum() + mlp.sum()))
        top = int(np.argmax(attn + mlp))
        values = [mean([r[k] for r in chosen]) for k in ("tuco", "tuco_attn", "tuco_mlp")]
        check = max(r["sum_check"] for r in chosen)
        rows.append([group, len(chosen), *values, share, top, f"{check:.1e}"])
        metrics |= {f"{group}_{k}": v for k, v in zip(("tuco", "tuco_attn", "tuco_mlp"), values, strict=True)}
        metrics |= {f"{group}_attention_share": share, f"{group}_sum_check_max": check}
    table = "\n".join(
        [
            "# Where the FTC lives: attention vs MLP",
            "",
            "Offline prompts: the demo recipe's held-out benign (chat) and harmful requests through the "
            "chat template, Shakespeare windows as raw text (web). `attention share`: the attention "
            "side's part of the summed per-layer FTC norms; `top block`: the block with the largest "
            "FTC (both sides).",
            "",
            *markdown_table(
                [
                    "group",
                    "n",
                    "TuCo",
                    "TuCo attn",
                    "TuCo MLP",
                    "attention share",
                    "top block",
                    "sum check max",
                ],
                rows,
            ),
            "",
            "Per-head split: "
            + ("computed (results.jsonl: ftc_heads)." if heads else "not exact for this family."),
            "",
        ]
    )
    figures = {"ftc_by_layer": _by_layer(records)}
    if heads:
        figures["ftc_heads"] = _heads(records)
    return out.finish(records, table, figures, metrics)


def _heads_exact(pair: ModelPair, prompt) -> bool:
    """Whether the per-head split is exact for this pair (no norm after the output projection)."""
    try:
        pair.score([prompt], heads=True, progress=False)
        return True
    except SublayerError:
        return False


def _mean(records: list[dict], group: str, field: str) -> np.ndarray:
    return np.mean([r[field] for r in records if r["group"] == group], axis=0)


def _by_layer(records: list[dict]):
    return stacked_sides(
        [
            (
                f"{g} (n={sum(r['group'] == g for r in records)})",
                _mean(records, g, "ftc_attn_layers"),
                _mean(records, g, "ftc_mlp_layers"),
            )
            for g in GROUPS
        ]
    )


def _heads(records: list[dict]):
    return head_maps([(g, _mean(records, g, "ftc_heads")) for g in GROUPS])
