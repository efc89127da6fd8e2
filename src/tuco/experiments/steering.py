"""Beyond the paper: FTC-alpha steering on held-out harmful and benign requests (the demo recipe's
held-out tasks under a seen and an unseen template): greedy answers judged by refusal strings, refusal
rate and TuCo vs alpha in 0..1.5."""

from __future__ import annotations

from ..pair import ModelPair
from ..plots import figure
from ..refusal import is_refusal, refusal_rate
from ..tables import markdown_table
from .common import RunDirectory, as_prompt, mean


def steering(
    pair: ModelPair,
    out: RunDirectory,
    alphas: list[float],
    limit: int | None = None,
    system: str | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
) -> str:
    """Refusal rate and TuCo (measured along the steered stream) vs alpha."""
    from ..demo import recipe as safety

    templates = (safety.TEMPLATES_TRAIN[0], safety.TEMPLATE_HELD_OUT)
    sets = {
        "harmful": [
            t.format(task=task) for _, task in safety.tasks(safety.HARMFUL_HELD_OUT) for t in templates
        ][:limit],
        "benign": [t.format(task=task) for task in safety.BENIGN_HELD_OUT for t in templates][:limit],
    }
    items = [
        dict(id=f"{name}/{i}", group=name, prompt=p, chat=as_prompt(pair, p, system))
        for name, prompts in sets.items()
        for i, p in enumerate(prompts)
    ]

    def compute(batch: list[dict]) -> list[dict]:
        chats = [it["chat"] for it in batch]
        records = [dict(id=it["id"], group=it["group"], prompt=it["prompt"], runs=[]) for it in batch]
        for alpha in alphas:
            answers = pair.generate(
                chats,
                alpha=alpha,
                max_new_tokens=max_new_tokens,
                temperature=0,
                batch_size=batch_size,
            )
            scores = pair.score(chats, alpha=alpha, batch_size=batch_size)
            for record, answer, s in zip(records, answers, scores, strict=True):
                record["runs"].append(
                    dict(alpha=alpha, tuco=s.tuco, response=answer, refused=is_refusal(answer))
                )
        return records

    done = out.step("answers", items, compute, batch_size, desc="steering")
    records = [{k: v for k, v in d.items() if k != "runs"} | run for d in done for run in d["runs"]]
    rates, tucos = {}, {}
    for alpha in alphas:
        for name in sets:
            mine = [rec for rec in records if rec["alpha"] == alpha and rec["group"] == name]
            rates[alpha, name] = refusal_rate([rec["refused"] for rec in mine])
            tucos[alpha, name] = mean([rec["tuco"] for rec in mine])
    table = "\n".join(
        [
            "# Steering: refusal rate and TuCo vs alpha (x + PTC + alpha * FTC at every block)",
            "",
            f"Held-out requests: {len(sets['harmful'])} harmful, {len(sets['benign'])} benign; greedy "
            f"answers of {max_new_tokens} tokens judged by the refusal strings; TuCo measured along the "
            "steered stream.",
            "",
            *markdown_table(
                ["alpha", "harmful refused", "benign refused", "TuCo harmful", "TuCo benign"],
                [
                    [f"{a:g}", f"{rates[a, 'harmful']:.0%}", f"{rates[a, 'benign']:.0%}"]
                    + [tucos[a, "harmful"], tucos[a, "benign"]]
                    for a in alphas
                ],
            ),
            "",
        ]
    )
    fig, (left, right) = figure(ncols=2)
    for name in sets:
        left.plot(alphas, [rates[a, name] for a in alphas], marker="o", label=f"{name} requests")
        right.plot(alphas, [tucos[a, name] for a in alphas], marker="o", label=f"{name} requests")
    left.set(xlabel="alpha", ylabel="refusal rate", title="FTC-alpha steering")
    right.set(xlabel="alpha", ylabel="mean TuCo", title="TuCo along the steered stream")
    left.legend()
    metrics = {"alphas": list(alphas)} | {
        f"{key}_{name}": [values[a, name] for a in alphas]
        for key, values in (("refusal_rate", rates), ("mean_tuco", tucos))
        for name in sets
    }
    return out.finish(records, table, {"refusal_vs_alpha": fig}, metrics)
