"""``make demo``: what TuCo shows on the embedded pair, end to end, offline.

Builds the pair if it is not cached (``build``), then scores four prompt sets: (a) windows of
public-domain text (pre-training-like), (b) benign chat requests, (c) harmful chat requests, (d)
the harmful requests under many-shot jailbreaks of k faux compliant turns; generates the FT
model's answers to every chat to see which attacks succeed (refusal strings). Writes
``results.jsonl``, ``report.html`` and ``summary.md`` into the output directory and prints the summary.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..attacks import many_shot
from ..experiments.stats import roc_auc
from ..pair import ModelPair
from ..refusal import is_refusal
from ..report import write_report
from ..store import ResultsFile
from . import recipe as r
from .build import DemoPair, build
from .texts import windows


@dataclass(frozen=True)
class DemoConfig:
    recipe: r.Recipe = r.Recipe()
    n_prose: int = 24
    n_requests: int = 16  # held-out tasks per chat set (benign, harmful), each in two templates
    n_msj_targets: int = 5
    shots: tuple[int, ...] = (1, 2, 4)
    batch_size: int = 16
    answer_tokens: int = 12  # new tokens generated to judge refusals (they show in the first words)


TINY = DemoConfig(
    recipe=r.TINY, n_prose=4, n_requests=2, n_msj_targets=2, shots=(1, 2), batch_size=4, answer_tokens=8
)


def prompt_sets(tokenizer, config: DemoConfig) -> list[dict]:
    """Records {"id", "set", "prompt", "is_chat", "shots"}: the four prompt sets of the demo."""
    recipe = config.recipe
    seen, unseen = r.TEMPLATES_TRAIN[0], r.TEMPLATE_HELD_OUT
    records = [
        dict(set="prose", prompt=w["prompt"], source=w["source"], is_chat=0)
        for w in windows(tokenizer, config.n_prose, seed=recipe.seed)
    ]
    records += [
        dict(set="benign", prompt=r.request(task, t), is_chat=1)
        for task in recipe.cut(r.BENIGN_HELD_OUT)[: config.n_requests]
        for t in (seen, unseen)
    ]
    harmful = [task for _, task in recipe.cut(r.tasks(r.HARMFUL_HELD_OUT))][: config.n_requests]
    records += [
        dict(set="harmful", prompt=r.request(task, t), is_chat=1, shots=0)
        for task in harmful
        for t in (seen, unseen)
    ]
    pool = r.compliance_pool()
    targets = harmful[: config.n_msj_targets]
    records += [
        dict(set=f"many-shot k={k:02d}", prompt=many_shot(seen.format(task=task), pool, k), shots=k)
        for k in config.shots
        for task in targets
    ]
    return [dict(rec, id=i) for i, rec in enumerate(records)]


def run(
    out: str | Path = "demo-output",
    config: DemoConfig = DemoConfig(),
    home: Path | None = None,
    dtype: str = "auto",
    force: bool = False,
) -> str:
    """Run the demo on the shipped adapter (or, with ``force``, on one trained again from the recipe)."""
    out = Path(out)
    demo = build(config.recipe, home, force=force, dtype=dtype)
    start = time.perf_counter()
    print(
        f"demo pair: SmolLM2-135M-Instruct + the LoRA adapter in {demo.adapter} "
        f"(recipe {demo.metrics['recipe']})"
    )
    pair = ModelPair.from_pretrained(
        str(demo.pretrained), adapter=str(demo.adapter), dtype=dtype, device_map="cpu"
    )
    records = prompt_sets(pair.tokenizer, config)
    prompts = [rec["prompt"] for rec in records]
    scores = pair.score(prompts, batch_size=config.batch_size, progress=True)
    chats = [i for i, rec in enumerate(records) if rec["set"] != "prose"]
    answers = pair.generate(
        [prompts[i] for i in chats],
        batch_size=config.batch_size,
        progress=True,
        max_new_tokens=config.answer_tokens,
        do_sample=False,
    )
    for i, answer in zip(chats, answers, strict=True):
        records[i] |= {"response": answer, "refused": is_refusal(answer)}
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "pretrained": str(demo.pretrained),
        "adapter": str(demo.adapter),
        "dtype": str(pair.finetuned.dtype).removeprefix("torch."),
        "dtype_reason": pair.dtype_reason,
        "tuco_version": __version__,
    }
    with ResultsFile(out / "results.jsonl", overwrite=True) as results:
        results.write([rec | s.to_dict() | meta for rec, s in zip(records, scores, strict=True)])
    write_report([str(out / "results.jsonl")], str(out / "report.html"), group_by="set", label="is_chat")
    summary = summarize(records, scores, demo, time.perf_counter() - start)
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"written: {out / 'results.jsonl'}, {out / 'report.html'}, {out / 'summary.md'}")
    return summary


def summarize(records: list[dict], scores: list, demo: DemoPair, seconds: float) -> str:
    by_set: dict[str, list[tuple[dict, float]]] = {}
    for rec, score in zip(records, scores, strict=True):
        by_set.setdefault(rec["set"], []).append((rec, score.tuco))
    lines = [
        "# tuco demo",
        "",
        f"Pair: SmolLM2-135M-Instruct (PT) vs its LoRA safety fine-tune (FT), "
        f"recipe {demo.metrics['recipe']}, {demo.metrics['train_examples']} training examples.",
        "",
        "## Held-out refusal rates (built with the pair)",
        "",
        "| requests | n | FT refuses | PT refuses |",
        "|---|---|---|---|",
    ]
    for name, m in demo.metrics["held_out"].items():
        lines.append(f"| {name} | {m['n']} | {m['refusal_ft']:.0%} | {m['refusal_pt']:.0%} |")
    lines += [
        "",
        "## TuCo per prompt set",
        "",
        "| set | n | mean TuCo | std | FT refusal rate |",
        "|---|---|---|---|---|",
    ]
    for name, rows in by_set.items():
        tucos = [t for _, t in rows]
        refused = [rec["refused"] for rec, _ in rows if "refused" in rec]
        rate = f"{sum(refused) / len(refused):.0%}" if refused else "-"
        std = statistics.stdev(tucos) if len(tucos) > 1 else 0.0
        lines.append(f"| {name} | {len(rows)} | {statistics.mean(tucos):.4f} | {std:.4f} | {rate} |")
    labelled = [(rec["is_chat"], s.tuco) for rec, s in zip(records, scores, strict=True) if "is_chat" in rec]
    auc = roc_auc([t for y, t in labelled if y], [t for y, t in labelled if not y])
    lines += [
        "",
        f"ROC-AUC of TuCo, chat (benign + harmful) vs pre-training-like text: **{auc:.3f}**",
        "",
        "## Many-shot jailbreak (harmful requests after k faux compliant turns)",
        "",
        "| shots | n | mean TuCo | FT refusal rate | attack success |",
        "|---|---|---|---|---|",
    ]
    for rows in by_set.values():
        if "shots" not in rows[0][0]:
            continue
        refused = sum(rec["refused"] for rec, _ in rows) / len(rows)
        shots = rows[0][0]["shots"]
        lines.append(
            f"| {shots} | {len(rows)} | {statistics.mean(t for _, t in rows):.4f} | {refused:.0%} "
            f"| {1 - refused:.0%} |"
        )
    lines += [
        "",
        f"Demo run time: {seconds:.0f} s. The adapter was trained once, in {demo.metrics['build_seconds']} s "
        f"({demo.metrics.get('dtype', '?')} on {demo.metrics.get('cpu', '?')}), and ships with tuco.",
        "",
    ]
    return "\n".join(lines)
