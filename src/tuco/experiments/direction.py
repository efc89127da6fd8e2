"""The direction check: does TuCo rise with alpha on this pair, for these prompts?

    tuco experiment direction --pair demo-safety --out runs/direction     (default: the harmful requests)

The paper reads many-shot, GCG and conjugate prompting as acting like FTC-alpha with alpha < 1, so
that they lower TuCo. That reading needs TuCo to rise with alpha on the pair: this step measures it
(TuCo along the FTC-alpha stream at several alphas, the slope and a bootstrap interval,
``estimates.direction``), and every jailbreak experiment runs it on its own prompts and states its
verdict with it (``estimates.verdict``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..pair import ModelPair
from ..plots import figure
from ..tables import markdown_table
from .common import RunDirectory, as_prompt
from .estimates import direction

ALPHAS = (0.5, 0.75, 1.0, 1.25)


def measure(
    pair: ModelPair,
    out: RunDirectory,
    requests: Sequence[dict],
    *,
    alphas: Sequence[float] = ALPHAS,
    system: str | None = None,
    batch_size: int = 8,
) -> tuple[dict, list[str]]:
    """The direction check on ``requests`` (dicts with ``id`` and ``prompt``): its numbers and the
    lines that report them. Resumable (the step ``direction``)."""
    items = [
        dict(
            id=f"{r['id']}@{a:g}", request=r["id"], alpha=float(a), chat=as_prompt(pair, r["prompt"], system)
        )
        for a in alphas
        for r in requests
    ]

    def compute(window: list[dict]) -> list[dict]:
        records = []
        for a in sorted({item["alpha"] for item in window}):
            mine = [item for item in window if item["alpha"] == a]
            scores = pair.score([item["chat"] for item in mine], alpha=a, batch_size=batch_size)
            records += [
                dict(id=item["id"], request=item["request"], alpha=a, tuco=s.tuco)
                for item, s in zip(mine, scores, strict=True)
            ]
        return records

    records = out.step("direction", items, compute, batch_size, desc="direction check")
    by_alpha = {float(a): [r["tuco"] for r in records if r["alpha"] == float(a)] for a in alphas}
    check = direction(by_alpha)
    low, high = check["interval"]
    lines = [
        "## Direction check: does TuCo rise with alpha here?",
        "",
        f"TuCo of the {len(requests)} requests along the FTC-alpha stream:",
        "",
        *markdown_table(
            ["alpha", "mean TuCo"], [[a, t] for a, t in zip(check["alphas"], check["mean_tuco"], strict=True)]
        ),
        "",
        f"Slope {check['slope']:+.4f} per unit alpha (95% bootstrap interval {low:+.4f} .. {high:+.4f}): "
        + (
            "TuCo **rises** with alpha, so an attack that acts like alpha < 1 should lower it: the paper's "
            "claim is testable on this pair."
            if check["rises_with_alpha"]
            else "TuCo does **not** rise with alpha, so the paper's claim (attacks lower TuCo because they "
            "act like alpha < 1) is **untestable on this pair**."
        ),
    ]
    return check, lines


def direction_experiment(pair: ModelPair, out: RunDirectory, requests, source: str, **options) -> str:
    """``tuco experiment direction``: the check alone, with its table, figure and metrics."""
    check, lines = measure(pair, out, requests, **options)
    fig, ax = figure()
    ax.plot(check["alphas"], check["mean_tuco"], marker="o")
    ax.set(xlabel="alpha", ylabel="mean TuCo", title="TuCo along the FTC-alpha stream")
    table = "\n".join(["# Direction check", "", f"Requests: {source}.", "", *lines[2:]]) + "\n"
    records = [
        dict(id=f"alpha/{a:g}", alpha=a, mean_tuco=t)
        for a, t in zip(check["alphas"], check["mean_tuco"], strict=True)
    ]
    return out.finish(records, table, {"direction": fig}, {"direction": check})
