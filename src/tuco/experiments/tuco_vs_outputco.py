"""E5: TuCo vs OutputCo on the refusal many-shot prompt ("Could you tell me if ...? A: No", k shots):
TuCo, OutputCo, KL(p_FT || p_PT), FTC norm and final-state distance vs k (the TuCo paper, Nuti et
al., ICML 2025).

Two forms of the prompt: the paper's raw text (ending in "A:", as its appendix writes it) and the
same text as one chat turn (the pair's prompt format). For every k, ``draws`` random orders and
subsets of the 32 facts (draw 0 is the paper's order): the table gives the mean and the spread.
"""

from __future__ import annotations

import random

import numpy as np

from ..pair import ModelPair
from ..plots import figure
from ..tables import markdown_table
from .common import RunDirectory, as_prompt
from .jailbreaks import context_length
from .prompts import FACTS, refusal_many_shot

FORMS = ("raw", "chat")


def facts_of(k: int, draw: int) -> tuple[str, ...]:
    """The k facts of a draw: the paper's first k for draw 0, else a random subset in random order."""
    return FACTS[:k] if draw == 0 else tuple(random.Random(draw).sample(FACTS, k))


def tuco_vs_outputco(
    pair: ModelPair,
    out: RunDirectory,
    max_shots: int = 32,
    system: str | None = None,
    batch_size: int = 8,
    draws: int = 5,
) -> str:
    fits = context_length(pair)
    items = []
    for form in FORMS:
        for k in range(1, min(max_shots, len(FACTS)) + 1):
            for draw in range(draws):
                text = refusal_many_shot(k, facts_of(k, draw))
                prompt = text if form == "raw" else as_prompt(pair, text, system)
                if len(pair.encode([prompt])[0]) <= fits:
                    items.append(dict(id=f"{form}/{k}/{draw}", form=form, shots=k, draw=draw, prompt=prompt))
    if not items:
        raise ValueError(f"E5: not even one shot fits the model's context of {fits} tokens")

    def compute(batch: list[dict]) -> list[dict]:
        prompts = [it["prompt"] for it in batch]
        scores = pair.score(prompts, batch_size=batch_size)
        baselines = pair.output_contribution(prompts, batch_size=batch_size)
        return [
            {k: it[k] for k in ("id", "form", "shots", "draw")} | s.to_dict() | b.to_dict()
            for it, s, b in zip(batch, scores, baselines, strict=True)
        ]

    records = out.step("scores", items, compute, batch_size, desc="E5 scores")
    summary = {form: _summary([r for r in records if r["form"] == form]) for form in FORMS}
    table = _table(summary, draws, max_shots, fits)
    fig, (ax, bottom) = figure(ncols=2)
    for form, rows in summary.items():
        if rows:
            shots = [row["shots"] for row in rows]
            for key, marker in (("tuco", "o"), ("outputco", "s")):
                mean, sd = np.array([row[key] for row in rows]), np.array([row[key + "_sd"] for row in rows])
                ax.plot(
                    shots,
                    mean,
                    marker=marker,
                    ms=3,
                    label=f"{'TuCo' if key == 'tuco' else 'OutputCo'}, {form}",
                )
                ax.fill_between(shots, mean - sd, mean + sd, alpha=0.15)
            mine = [r for r in records if r["form"] == form]
            bottom.scatter([r["distance"] for r in mine], [r["ftc_norm"] for r in mine], s=8, label=form)
    ax.set(xlabel="shots k", ylabel="contribution", title="E5: mean ± sd over draws")
    ax.legend(fontsize=7)
    bottom.set(
        xlabel="final-state distance ||x_FT - x_PT||", ylabel="FTC norm ||F||", title="FTC vs distance"
    )
    bottom.legend(fontsize=7)
    metrics = {
        form: {k: [row[k] for row in rows] for k in ("shots", "tuco", "tuco_sd", "outputco", "kl")}
        for form, rows in summary.items()
        if rows
    }
    for form, rows in summary.items():
        if rows:
            metrics[form] |= {
                "tuco_first": rows[0]["tuco"],
                "tuco_last": rows[-1]["tuco"],
                "outputco_first": rows[0]["outputco"],
                "outputco_last": rows[-1]["outputco"],
            }
    return out.finish(records, table, {"tuco_vs_shots": fig}, metrics)


def _summary(records: list[dict]) -> list[dict]:
    """Per k: mean and standard deviation over the draws of each measure."""
    rows = []
    for k in sorted({r["shots"] for r in records}):
        mine = [r for r in records if r["shots"] == k]
        row = {"shots": k, "n": len(mine)}
        for key in ("tuco", "outputco", "kl", "ftc_norm", "distance"):
            values = np.array([r[key] for r in mine])
            row |= {key: float(values.mean()), key + "_sd": float(values.std())}
        rows.append(row)
    return rows


def _table(summary: dict[str, list[dict]], draws: int, max_shots: int, fits: int) -> str:
    lines = [
        "# E5: TuCo vs OutputCo on the refusal many-shot prompt",
        "",
        f"Per k, the mean ± sd over {draws} draws of the facts (draw 0: the paper's first k, in order; "
        "the others: random subsets in random order); raw: the paper's text as it is, ending in 'A:'; "
        "chat: the same text as one user turn through the pair's prompt format. Shot counts whose "
        f"prompt exceeds the context ({fits} tokens) are left out (asked for: up to {max_shots}).",
        "",
    ]
    for form, rows in summary.items():
        if not rows:
            continue
        lines += [
            f"## {form}",
            "",
            *markdown_table(
                ["shots", "n", "TuCo", "OutputCo", "KL(p_FT, p_PT)", "FTC norm", "final-state distance"],
                [
                    [
                        r["shots"],
                        r["n"],
                        f"{r['tuco']:.4f} ± {r['tuco_sd']:.4f}",
                        f"{r['outputco']:.4f} ± {r['outputco_sd']:.4f}",
                        f"{r['kl']:.4f}",
                        f"{r['ftc_norm']:.1f}",
                        f"{r['distance']:.1f}",
                    ]
                    for r in rows
                ],
            ),
            "",
            f"{form}: TuCo {rows[0]['tuco']:.4f} -> {rows[-1]['tuco']:.4f}; "
            f"OutputCo {rows[0]['outputco']:.4f} -> {rows[-1]['outputco']:.4f}.",
            "",
        ]
    lines.append("Paper (Llama-2 7B chat): TuCo 0.235 -> 0.255 while OutputCo first falls.")
    return "\n".join(lines) + "\n"
