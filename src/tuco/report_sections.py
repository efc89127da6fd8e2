"""Sections of ``tuco report`` beyond the per-prompt TuCo: where the numbers come from, the prompts
with the highest and lowest TuCo, and, from ``tuco score --components [--heads]``, where the FTC
lives inside the blocks (attention vs MLP per layer, TuCo of each side, per-head heat maps), and from
``tuco score --chain``, each training stage's share.

Each section is a dict: title, optional text, table (DataFrame), figure (PNG bytes), html.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .plots import figure, head_maps, png, stacked_sides, stage_shares
from .store import settings_path

PROVENANCE = (
    "command",
    "pretrained",
    "finetuned",
    "adapter",
    "chain",
    "chain_adapters",
    "dtype",
    "tuco_version",
    "prompts",
    "dataset",
)
EXTREMES = 3  # prompts shown at each end, per group
MAX_PANELS = 4  # groups drawn side by side


def provenance(results: list[str], frame) -> dict:
    """Models, dtype, tuco version, command and date of every results file, from the settings kept
    beside it (else from its records)."""
    rows = []
    for path in map(Path, results):
        settings = {}
        sidecar = settings_path(path)
        if sidecar.exists():
            settings = json.loads(sidecar.read_text(encoding="utf-8"))
        records = frame[frame["source"] == path.name] if "source" in frame else frame
        first = records.iloc[0].to_dict() if len(records) else {}
        row = {"file": path.name}
        for key in PROVENANCE:
            value = settings.get(key, first.get(key))
            if key == "command" and value:
                value = f"tuco {value}"
            row[key] = "" if value is None or value != value else str(value)  # value != value: NaN
        mtime = path.stat().st_mtime if path.exists() else None
        row["date"] = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%d %H:%M UTC") if mtime else ""
        rows.append(row)
    import pandas as pd

    table = pd.DataFrame(rows).set_index("file")
    table = table.loc[:, (table != "").any()]  # fields no file has
    return {"title": "Where these numbers come from", "table": table}


def extremes(scores) -> dict:
    """The prompts with the highest and lowest TuCo per group; drawn token by token, coloured by
    their TuCo, where the records have per-token values (``tuco score --per-token``)."""
    blocks, rows = [], []
    per_token = "tuco_tokens" in scores
    values = [float(v) for t in scores["tuco_tokens"].dropna() for v in t] if per_token else []
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    for name, group in scores.groupby("_group"):
        ranked = group.sort_values("tuco", ascending=False)
        ends = [("highest", ranked.head(EXTREMES)), ("lowest", ranked.tail(EXTREMES).iloc[::-1])]
        for end, chosen in ends:
            for _, row in chosen.iterrows():
                text = _prompt_text(row)
                rows.append(
                    {"group": name, "end": end, "id": row["id"], "tuco": row["tuco"], "prompt": text[:200]}
                )
                tucos = row.get("tuco_tokens") if per_token else None
                if isinstance(tucos, list | np.ndarray) and len(tucos):
                    head = html.escape(f"{name}, {end} TuCo: id {row['id']}, TuCo {row['tuco']:.4f}")
                    body = _coloured(row.get("prompt_tokens"), tucos, low, high)
                    blocks.append(
                        f"<div class='answer'><div class='meta'>{head}</div><div>{body}</div></div>"
                    )
    import pandas as pd

    section = {
        "title": f"Highest and lowest TuCo per group ({EXTREMES} each)",
        "table": pd.DataFrame(rows).set_index("group").round(4),
    }
    if blocks:
        section["text"] = f"tokens coloured by TuCo at that token: red = {low:.3f} ... blue = {high:.3f}"
        section["html"] = "".join(blocks)
    return section


def _prompt_text(row) -> str:
    for key in ("prompt", "text"):
        value = row.get(key)
        if isinstance(value, str):
            return value
    messages = row.get("messages")
    if isinstance(messages, list | np.ndarray) and len(messages):
        return " | ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return ""


def _coloured(tokens, tucos, low: float, high: float) -> str:
    from matplotlib import colormaps

    cmap = colormaps["RdYlBu"]  # red: low TuCo (little fine-tuning), blue: high
    if not isinstance(tokens, list | np.ndarray) or len(tokens) != len(tucos):
        tokens = [f"[{i}]" for i in range(len(tucos))]
    spans = []
    for token, value in zip(tokens, tucos, strict=True):
        r, g, b, _ = cmap((value - low) / (high - low) if high > low else 0.5)
        style = f"background:rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})"
        text = html.escape(str(token))
        spans.append(f"<span class='tok' style='{style}' title='TuCo {value:.4f}'>{text}</span>")
    return "".join(spans)


# ---------------------------------------------------------------------- inside the block
def sublayers(scores) -> list[dict]:
    """From ``--components`` records: stacked attention/MLP FTC per layer by group, TuCo of each
    side per group, and with ``--heads`` a heat map of mean FTC norms per block and head."""
    scores = scores[scores["ftc_attn_layers"].notna()]
    if not len(scores):
        return []
    sides = scores.groupby("_group").agg(
        tuco=("tuco", "mean"), tuco_attn=("tuco_attn", "mean"), tuco_mlp=("tuco_mlp", "mean")
    )
    sides["sum_check_max"] = scores.groupby("_group")["sum_check"].max()
    sections = [
        {"title": "Attention vs MLP: FTC per layer (mean over prompts)", "figure": _stacked(scores)},
        {
            "title": "TuCo of each sublayer kind (mean over prompts)",
            "text": "tuco_attn and tuco_mlp: the TuCo formula on the sums of that kind's PTC and FTC over "
            "all blocks; sum_check_max: the largest relative L1 error of attention + MLP against a "
            "block's own PTC/FTC (float32: about 1e-7).",
            "table": sides.round(4),
            "figure": _side_bars(sides),
        },
    ]
    if "ftc_heads" in scores and scores["ftc_heads"].notna().any():
        sections.append(
            {"title": "FTC norm per block and head (mean over prompts)", "figure": _heads(scores)}
        )
    return sections


def _groups(scores):
    return list(scores.groupby("_group"))[:MAX_PANELS]


def _mean(rows, column: str) -> np.ndarray:
    return np.mean(
        np.stack([np.asarray([np.asarray(r, dtype=float) for r in v]) for v in rows[column]]), axis=0
    )


def _stacked(scores) -> bytes:
    panels = [
        (f"{name} (n={len(rows)})", _mean(rows, "ftc_attn_layers"), _mean(rows, "ftc_mlp_layers"))
        for name, rows in _groups(scores)
    ]
    return png(stacked_sides(panels))


def _side_bars(sides) -> bytes:
    fig, ax = figure()
    x = np.arange(len(sides))
    for i, column in enumerate(("tuco", "tuco_attn", "tuco_mlp")):
        ax.bar(x + (i - 1) * 0.27, sides[column], width=0.27, label=column)
    ax.set_xticks(x, [str(i) for i in sides.index])
    ax.set(ylabel="mean TuCo")
    ax.legend()
    return png(fig)


def _heads(scores) -> bytes:
    with_heads = scores[scores["ftc_heads"].notna()]
    panels = [(f"{name} (n={len(rows)})", _mean(rows, "ftc_heads")) for name, rows in _groups(with_heads)]
    return png(head_maps(panels))


# ---------------------------------------------------------------------- training stages
def stages(scores) -> list[dict]:
    """From ``tuco score --chain`` records: each stage's mean share per group (PTC's too: the shares
    and PTC's add up to 1), drawn as stacked bars, and each stage's norm per block."""
    scores = scores[scores["stage_tuco"].notna()]
    if not len(scores):
        return []
    names = stage_names(scores.iloc[0].to_dict(), len(scores.iloc[0]["stage_tuco"]))
    summary = {}
    for group, frame in scores.groupby("_group"):
        shares = _mean(frame, "stage_tuco")
        summary[group] = {"n": len(frame), "PTC": 1 - shares.sum(), **dict(zip(names, shares, strict=True))}
        summary[group]["tuco (all stages)"] = frame["tuco"].mean()
    import pandas as pd

    table = pd.DataFrame.from_dict(summary, orient="index")
    panels = [(f"{name} (n={len(rows)})", _mean(rows, "stage_layers")) for name, rows in _groups(scores)]
    return [
        {
            "title": "Training stages: each stage's share (mean over prompts)",
            "text": "stage k's share: ||C_k|| / (||P|| + sum_j ||C_j||), C_k the sum over blocks of "
            "f_{M_k}(x_l) - f_{M_{k-1}}(x_l) at the last token, on the final model's stream; the stage "
            "components add up to the FTC of the first and last checkpoints exactly.",
            "table": table.round(4),
            "figure": png(stage_shares(table[["PTC", *names]], panels, names)),
        }
    ]


def stage_names(record: dict, k: int) -> list[str]:
    """A label for each stage: the checkpoint or adapter it adds (its last path part)."""
    added = record.get("chain_adapters")
    if not isinstance(added, list | tuple):
        chain = record.get("chain")
        added = list(chain)[1:] if isinstance(chain, list | tuple) else []
    labels = [Path(str(a).rstrip("/")).name or str(a) for a in added]
    if len(labels) != k or len(set(labels)) != k:
        return [f"stage {i}" for i in range(1, k + 1)]
    return [f"{i}: {label}" for i, label in enumerate(labels, start=1)]
