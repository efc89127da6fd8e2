"""E1: multiple-choice accuracy and behaviour agreement vs alpha (the TuCo paper, Nuti et al., ICML 2025).

The answer under alpha is the candidate (Yes/No, A-D, ...) with the highest next-token probability of
the FTC-alpha model; a candidate's probability sums its spellings with and without a leading space.
Per task, 5-fold cross-validation picks alpha* on four folds and scores it on the fifth; Delta = CV
accuracy - accuracy at alpha = 1, once maximising and once minimising accuracy.

    >>> items = sources.mmlu(["anatomy"], directory="mmlu/")   # or persona(...), standin_*()
    >>> alpha_sweep(pair, RunDirectory("runs/e1", settings), items)
"""

from __future__ import annotations

from ..inputs import choose
from ..pair import ModelPair
from ..plots import figure
from ..tables import markdown_table
from .common import RunDirectory, as_prompt, mean
from .estimates import cross_validated_alpha, significance
from .sources import category

PAPER_ALPHAS = (0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25)


def answer_items(
    pair: ModelPair,
    items: list[dict],
    alphas: tuple[float, ...],
    system: str | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """One record per item: the probability of each choice and the prediction under every alpha."""
    prompts = [as_prompt(pair, item["prompt"], system) for item in items]
    records = [
        dict(id=it["id"], task=it["task"], choices=it["choices"], answer=it["answer"], alphas=list(alphas))
        for it in items
    ]
    for record in records:
        record |= dict(probs=[], pred=[], correct=[])
    for alpha in alphas:
        probs = pair.next_token_probs(prompts, alpha, batch_size=batch_size)
        for record, row in zip(records, probs, strict=True):
            p, pred = choose(pair.tokenizer, row, record["choices"])
            record["probs"].append(p)
            record["pred"].append(pred)
            record["correct"].append(pred == record["answer"])
    return records


def alpha_sweep(
    pair: ModelPair,
    out: RunDirectory,
    items: list[dict],
    alphas: tuple[float, ...] = PAPER_ALPHAS,
    *,
    system: str | None = None,
    batch_size: int = 8,
    folds: int = 5,
    source: str = "",
) -> str:
    if 1.0 not in alphas:
        raise ValueError("the alpha grid must contain 1 (the fine-tuned model) as the baseline")
    answered = out.step(
        "answers",
        items,
        lambda batch: answer_items(pair, batch, alphas, system, batch_size),
        batch_size,
        desc="E1 answers",
    )
    records = [
        dict(
            id=r["id"],
            task=r["task"],
            alpha=a,
            pred=r["pred"][j],
            answer=r["answer"],
            correct=r["correct"][j],
        )
        | dict(probs=r["probs"][j], choices=r["choices"])
        for r in answered
        for j, a in enumerate(r["alphas"])
    ]
    tasks = sorted({r["task"] for r in answered}, key=[r["task"] for r in answered].index)
    rows, curves, right = [], {}, {}
    for task in tasks:
        mine = [r for r in answered if r["task"] == task]
        correct = {a: [r["correct"][j] for r in mine] for j, a in enumerate(alphas)}
        curves[task] = [mean(correct[a]) for a in alphas]
        right[task] = [mean([_p_right(r, j) for r in mine]) for j in range(len(alphas))]
        if len(mine) < folds:
            rows.append(dict(task=task, n=len(mine), base=mean(correct[1.0]), up=None, down=None))
            continue
        up = cross_validated_alpha(correct, folds, maximize=True)
        down = cross_validated_alpha(correct, folds, maximize=False)
        for result in (up, down):
            result |= significance(result["cv_correct"], result["base_correct"])
        rows.append(dict(task=task, n=len(mine), base=up["baseline"], up=up, down=down))
    table = (
        _table(rows, alphas, curves, folds, source) + _categories(rows) + _probability_table(right, alphas)
    )
    fig, ax = figure()
    for task, accuracy in curves.items():
        ax.plot(alphas, accuracy, marker="o", label=task if len(curves) <= 10 else None)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="alpha", ylabel="accuracy / behaviour agreement", title="E1: accuracy vs alpha")
    if len(curves) <= 10:
        ax.legend(fontsize=7)
    scored = [row for row in rows if row["up"] is not None]
    pooled = {way: _pooled(scored, way) for way in ("up", "down")}
    metrics = {
        "delta_max": mean([row["up"]["delta"] for row in scored]),
        "delta_min": mean([row["down"]["delta"] for row in scored]),
        "p_max": pooled["up"]["p_mcnemar"],
        "p_min": pooled["down"]["p_mcnemar"],
        "categories": {
            name: {"tasks": len(group), "delta_max": mean([r["up"]["delta"] for r in group])}
            for name, group in _by_category(scored).items()
        },
        "tasks_gaining": sum(row["up"]["delta"] > 0 for row in scored),
        "tasks": len(scored),
        "per_task": {
            row["task"]: {
                "n": row["n"],
                "accuracy_alpha_1": row["base"],
                "delta_max": row["up"] and row["up"]["delta"],
                "delta_min": row["down"] and row["down"]["delta"],
                "p_max": row["up"] and row["up"]["p_mcnemar"],
                "p_min": row["down"] and row["down"]["p_mcnemar"],
            }
            for row in rows
        },
        "accuracy_vs_alpha": {"alphas": list(alphas), **curves},
    }
    return out.finish(records, table, {"accuracy_vs_alpha": fig}, metrics)


def _pooled(rows: list[dict], way: str) -> dict:
    """``significance`` over the items of every task together (each task's CV answers)."""
    if not rows:
        return {"p_mcnemar": None}
    cv = [c for row in rows for c in row[way]["cv_correct"]]
    base = [c for row in rows for c in row[way]["base_correct"]]
    return significance(cv, base)


def _by_category(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = category(row["task"])
        if name is not None:
            groups.setdefault(name, []).append(row)
    return groups


def _categories(rows: list[dict]) -> str:
    """Mean Delta per category of the paper (persona: its five; MMLU: Humanities / STEM / Social
    sciences, and Other), as in its Tables 1 and 3."""
    groups = _by_category([r for r in rows if r["up"] is not None])
    if not groups:
        return ""
    cells = [
        [
            name,
            len(group),
            100 * mean([r["up"]["delta"] for r in group]),
            100 * mean([r["down"]["delta"] for r in group]),
        ]
        for name, group in groups.items()
    ]
    lines = [
        "",
        "Mean Delta (points) per category:",
        "",
        *markdown_table(["category", "tasks", "Delta max", "Delta min"], cells, "{:+.2f}"),
    ]
    return "\n".join(lines) + "\n"


def _p_right(record: dict, j: int) -> float:
    """Probability of the right (behaviour-matching) answer under alpha j, normalised over the choices."""
    probs = record["probs"][j]
    return probs[record["choices"].index(record["answer"])] / (sum(probs) or 1.0)


def _probability_table(right: dict, alphas) -> str:
    """A finer view than accuracy: it moves with alpha even where the argmax answer does not."""
    lines = [
        "",
        "Mean probability of the right / behaviour-matching answer, normalised over the choices:",
        "",
        *markdown_table(
            ["task", *(f"a={a:g}" for a in alphas)],
            [[task, *values] for task, values in right.items()],
            "{:.3f}",
        ),
    ]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], alphas, curves: dict, folds: int, source: str) -> str:
    def pts(value: float) -> str:
        return f"{100 * value:+.2f}"

    cells = []
    for row in rows:
        accuracy = [f"{100 * v:.1f}" for v in curves[row["task"]]]
        if row["up"] is None:
            cells.append([row["task"], row["n"], *accuracy, f"(fewer than {folds} items)", "", "", "", ""])
            continue
        chosen = "/".join(f"{a:g}" for a in row["up"]["alphas"])
        up, down = row["up"], row["down"]
        cells.append(
            [
                row["task"],
                row["n"],
                *accuracy,
                f"{pts(up['delta'])} [{pts(up['ci_low'])}, {pts(up['ci_high'])}]",
                f"{up['p_mcnemar']:.3g}",
                chosen,
                f"{pts(down['delta'])} [{pts(down['ci_low'])}, {pts(down['ci_high'])}]",
                f"{down['p_mcnemar']:.3g}",
            ]
        )
    header = [
        "task",
        "n",
        *(f"a={a:g}" for a in alphas),
        "Delta max (pts) [95% CI]",
        "p",
        "alpha* max",
        "Delta min (pts) [95% CI]",
        "p",
    ]
    lines = [
        "# E1: accuracy / behaviour agreement vs alpha",
        "",
        f"Items: {source}. Alpha grid: {', '.join(f'{a:g}' for a in alphas)}; "
        f"{folds}-fold cross-validated alpha*.",
        "",
        *markdown_table(header, cells),
    ]
    scored = [r for r in rows if r["up"] is not None]
    if scored:
        gains = sum(r["up"]["delta"] > 0 for r in scored)
        up, down = mean([r["up"]["delta"] for r in scored]), mean([r["down"]["delta"] for r in scored])
        p_up, p_down = _pooled(scored, "up")["p_mcnemar"], _pooled(scored, "down")["p_mcnemar"]
        lines += [
            "",
            f"Mean Delta over {len(scored)} tasks: maximising **{pts(up)}** points (gain on {gains} of "
            f"{len(scored)} tasks; McNemar p = {p_up:.3g} over all items), minimising **{pts(down)}** "
            f"points (p = {p_down:.3g}). Significance (the paper does not name its test): McNemar's exact "
            "test on the items whose answer changes, and a paired bootstrap 95% interval over items.",
            "",
            "Paper: behaviours +1.55..+5.18 points maximising, -2.80..-25.24 minimising; MMLU gains on 71% "
            "of tasks, mean +1.03..+2.69 points.",
        ]
    return "\n".join(lines) + "\n"
