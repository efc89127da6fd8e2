"""E5: TuCo vs OutputCo on the refusal many-shot prompt ("Could you tell me if ...? A: No", k shots):
TuCo, OutputCo, KL(p_FT || p_PT), FTC norm and final-state distance vs k (the TuCo paper, Nuti et
al., ICML 2025)."""

from __future__ import annotations

from ..pair import ModelPair
from ..plots import figure
from ..tables import markdown_table
from .common import RunDirectory, as_prompt
from .jailbreaks import context_length
from .prompts import refusal_many_shot


def tuco_vs_outputco(
    pair: ModelPair, out: RunDirectory, max_shots: int = 32, system: str | None = None, batch_size: int = 8
) -> str:
    prompts = {k: as_prompt(pair, refusal_many_shot(k), system) for k in range(1, max_shots + 1)}
    fits = context_length(pair)
    shots = [k for k, prompt in prompts.items() if len(pair.encode([prompt])[0]) <= fits]
    if not shots:
        raise ValueError(f"E5: not even one shot fits the model's context of {fits} tokens")
    items = [dict(id=k, shots=k, prompt=prompts[k]) for k in shots]

    def compute(batch: list[dict]) -> list[dict]:
        prompts = [it["prompt"] for it in batch]
        scores = pair.score(prompts, batch_size=batch_size, progress=False)
        baselines = pair.output_contribution(prompts, batch_size=batch_size, progress=False)
        return [
            {"id": it["id"], "shots": it["shots"]} | s.to_dict() | b.to_dict()
            for it, s, b in zip(batch, scores, baselines, strict=True)
        ]

    records = out.step("scores", items, compute, batch_size, desc="E5 scores")
    first, last = records[0], records[-1]
    table = "\n".join(
        [
            "# E5: TuCo vs OutputCo on the refusal many-shot prompt",
            "",
            f"Shots 1 to {shots[-1]}"
            + (f" (more do not fit the context of {fits} tokens)." if shots[-1] < max_shots else "."),
            "",
            *markdown_table(
                ["shots", "TuCo", "OutputCo", "KL(p_FT, p_PT)", "FTC norm", "final-state distance"],
                [
                    [
                        r["shots"],
                        r["tuco"],
                        r["outputco"],
                        r["kl"],
                        f"{r['ftc_norm']:.1f}",
                        f"{r['distance']:.1f}",
                    ]
                    for r in records
                ],
            ),
            "",
            f"TuCo {first['tuco']:.4f} -> {last['tuco']:.4f}; OutputCo {first['outputco']:.4f} -> "
            f"{last['outputco']:.4f} (paper, Llama-2 7B chat: TuCo 0.235 -> 0.255, OutputCo falls first).",
            "",
        ]
    )
    fig, ax = figure()
    ax.plot(shots, [r["tuco"] for r in records], marker="o", label="TuCo")
    ax.plot(shots, [r["outputco"] for r in records], marker="s", label="OutputCo")
    ax.set(xlabel="shots k", ylabel="contribution", title="E5")
    ax.legend()
    metrics = {k: [r[k] for r in records] for k in ("shots", "tuco", "outputco", "kl")}
    metrics |= {
        "tuco_first": first["tuco"],
        "tuco_last": last["tuco"],
        "outputco_first": first["outputco"],
        "outputco_last": last["outputco"],
    }
    return out.finish(records, table, {"tuco_vs_shots": fig}, metrics)
