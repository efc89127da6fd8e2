"""``make demo``: what TuCo shows on an embedded pair, end to end, offline.

Loads the pair (``pairs.demo_pair``: the shipped adapter, nothing trained), then scores four prompt
sets: (a) windows of public-domain text (pre-training-like), (b) benign chat requests, (c) harmful
chat requests, (d) the harmful requests under many-shot jailbreaks of k faux compliant turns;
generates the FT model's answers to every chat to see which attacks succeed (refusal strings); and
generates with FTC-alpha steering at a few alphas (0 is the pre-trained model exactly). Writes
``results.jsonl``, ``steering.jsonl``, ``report.html`` and ``summary.md`` into the output directory
and prints the summary.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..attacks import many_shot
from ..pair import ModelPair
from ..refusal import is_refusal, refusal_rate
from ..report import write_report
from ..stats import roc_auc
from ..store import ResultsFile
from ..tables import markdown_table
from . import chat_recipe
from . import recipe as safety
from .build import DemoPair
from .pairs import demo_pair
from .skeleton import Clock
from .texts import windows


@dataclass(frozen=True)
class DemoConfig:
    pair: str = "demo"  # "demo" (Gemma-3 base -> chat) or "demo-safety" (SmolLM2 -> safety LoRA)
    tiny: bool = False  # a tiny adapter trained from the tiny recipe (tests)
    n_prose: int = 16
    n_requests: int = 10  # held-out tasks per chat set (benign, harmful), each in two templates
    n_msj_targets: int = 3
    shots: tuple[int, ...] = (1, 2, 4)
    batch_size: int = 16
    answer_tokens: int = 12  # new tokens of every greedy answer (refusals show in the first words)
    steer_alphas: tuple[float, ...] = (0.0, 1.0, 1.25)  # alpha 1: the answers above, reused
    n_steer: int = 4  # held-out requests per kind (benign, harmful) generated at every alpha

    @property
    def recipe(self):
        if self.pair == "demo":
            return chat_recipe.TINY_CHAT if self.tiny else chat_recipe.ChatRecipe()
        return safety.TINY if self.tiny else safety.Recipe()


def tiny(pair: str = "demo") -> DemoConfig:
    return DemoConfig(
        pair=pair,
        tiny=True,
        n_prose=4,
        n_requests=2,
        n_msj_targets=2,
        shots=(1, 2),
        batch_size=4,
        answer_tokens=6,
        steer_alphas=(0.0, 1.0, 1.5),
        n_steer=1,
    )


def prompt_sets(tokenizer, config: DemoConfig) -> list[dict]:
    """Records {"id", "set", "prompt", "is_chat", "shots"}: the four prompt sets of the demo."""
    recipe = config.recipe
    seen, unseen = safety.TEMPLATES_TRAIN[0], safety.TEMPLATE_HELD_OUT
    records = [
        dict(set="prose", prompt=w["prompt"], source=w["source"], is_chat=0)
        for w in windows(tokenizer, config.n_prose, seed=recipe.seed)
    ]
    records += [
        dict(set="benign", prompt=safety.request(task, t), is_chat=1)
        for task in recipe.cut(safety.BENIGN_HELD_OUT)[: config.n_requests]
        for t in (seen, unseen)
    ]
    harmful = [task for _, task in recipe.cut(safety.tasks(safety.HARMFUL_HELD_OUT))][: config.n_requests]
    records += [
        dict(set="harmful", prompt=safety.request(task, t), is_chat=1, shots=0)
        for task in harmful
        for t in (seen, unseen)
    ]
    pool = safety.compliance_pool()
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
    demo = demo_pair(config.pair, config.tiny, home, force=force, dtype=dtype)
    start = time.perf_counter()
    print(f"demo pair {demo.name!r}: {demo.title}; adapter {demo.adapter} (recipe {demo.metrics['recipe']})")
    clock = Clock()
    pair = ModelPair.from_pretrained(
        str(demo.pretrained), adapter=str(demo.adapter), dtype=dtype, device_map="cpu"
    )
    clock.lap("load")
    records = prompt_sets(pair.tokenizer, config)
    prompts = [rec["prompt"] for rec in records]
    scores = pair.score(prompts, batch_size=config.batch_size, progress=True)
    clock.lap("TuCo")
    chats = [i for i, rec in enumerate(records) if rec["set"] != "prose"]
    answers = pair.generate(
        [prompts[i] for i in chats],
        batch_size=config.batch_size,
        progress=True,
        max_new_tokens=config.answer_tokens,
        temperature=0,
    )
    for i, answer in zip(chats, answers, strict=True):
        records[i] |= {"response": answer, "refused": is_refusal(answer)}
    clock.lap("answers")
    steering = steered_answers(
        pair, config, {_key(prompts[i]): a for i, a in zip(chats, answers, strict=True)}
    )
    clock.lap("steering")
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "pair": demo.name,
        "pretrained": str(demo.pretrained),
        "adapter": str(demo.adapter),
        "model_type": pair.finetuned.config.model_type,
        "dtype": str(pair.finetuned.dtype).removeprefix("torch."),
        "dtype_reason": pair.dtype_reason,
        "tuco_version": __version__,
    }
    with ResultsFile(out / "results.jsonl", overwrite=True) as results:
        results.write([rec | s.to_dict() | meta for rec, s in zip(records, scores, strict=True)])
    with ResultsFile(out / "steering.jsonl", overwrite=True) as results:
        results.write([rec | meta for rec in steering])
    write_report([str(out / "results.jsonl")], str(out / "report.html"), group_by="set", label="is_chat")
    clock.lap("report")
    summary = summarize(records, scores, steering, demo, meta, time.perf_counter() - start, clock.laps)
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"written: {out / 'results.jsonl'}, {out / 'report.html'}, {out / 'summary.md'}")
    return summary


KINDS = ("benign", "harmful")


def _key(prompt) -> str:
    return repr(prompt)


def steered_answers(pair: ModelPair, config: DemoConfig, finetuned: dict[str, str]) -> list[dict]:
    """Greedy answers of the FTC-alpha model to held-out benign and harmful requests (seen template),
    at each alpha; at alpha = 1 (the fine-tuned model) the answers already in ``finetuned`` (by
    ``_key(prompt)``) are reused."""
    recipe = config.recipe
    requests = {
        "benign": recipe.cut(safety.BENIGN_HELD_OUT)[: config.n_steer],
        "harmful": [task for _, task in recipe.cut(safety.tasks(safety.HARMFUL_HELD_OUT))][: config.n_steer],
    }
    rows = [
        (kind, safety.request(task, safety.TEMPLATES_TRAIN[0]))
        for kind, tasks in requests.items()
        for task in tasks
    ]
    records = []
    for alpha in config.steer_alphas:
        chats = [chat for _, chat in rows]
        if alpha == 1.0 and all(_key(c) in finetuned for c in chats):
            answers = [finetuned[_key(c)] for c in chats]
        else:
            answers = pair.generate(
                chats,
                alpha,
                batch_size=config.batch_size,
                progress=True,
                max_new_tokens=config.answer_tokens,
                temperature=0,
            )
        records += [
            {"alpha": alpha, "set": kind, "prompt": chat, "response": answer, "refused": is_refusal(answer)}
            for (kind, chat), answer in zip(rows, answers, strict=True)
        ]
    return records


def _held_out_table(held_out: dict) -> list[str]:
    turns = all("ends_turn_ft" in m for m in held_out.values())
    header = [
        "requests",
        "n",
        *(["FT ends its turn", "PT ends its turn"] if turns else []),
        "FT refuses",
        "PT refuses",
    ]
    keys = (["ends_turn_ft", "ends_turn_pt"] if turns else []) + ["refusal_ft", "refusal_pt"]
    return markdown_table(
        header, [[name, m["n"], *(m[k] for k in keys)] for name, m in held_out.items()], "{:.0%}"
    )


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summarize(
    records: list[dict],
    scores: list,
    steering: list[dict],
    demo: DemoPair,
    meta: dict,
    seconds: float,
    laps: dict[str, float] | None = None,
) -> str:
    by_set: dict[str, list[tuple[dict, float]]] = {}
    for rec, score in zip(records, scores, strict=True):
        by_set.setdefault(rec["set"], []).append((rec, score.tuco))
    examples = demo.metrics["train_examples"]
    n_examples = (
        sum(v for k, v in examples.items() if k != "dropped") if isinstance(examples, dict) else examples
    )
    lines = [
        "# tuco demo",
        "",
        f"Pair `{demo.name}`: {demo.title}, recipe {demo.metrics['recipe']}, {n_examples} training examples.",
        f"PT: `{meta['pretrained']}` ({meta['model_type']}); FT: PT + the LoRA adapter in "
        f"`{meta['adapter']}`; {meta['dtype']} ({meta['dtype_reason']}).",
        "",
        "## Held-out behaviour (measured when the adapter was built)",
        "",
        *_held_out_table(demo.metrics["held_out"]),
        "",
        "## TuCo per prompt set",
        "",
    ]
    rows = []
    for name, pairs in by_set.items():
        tucos = [t for _, t in pairs]
        refused = [rec["refused"] for rec, _ in pairs if "refused" in rec]
        std = statistics.stdev(tucos) if len(tucos) > 1 else 0.0
        rows.append(
            [
                name,
                len(pairs),
                statistics.mean(tucos),
                std,
                f"{refusal_rate(refused):.0%}" if refused else "-",
            ]
        )
    lines += markdown_table(["set", "n", "mean TuCo", "std", "FT refusal rate"], rows)
    labelled = [(rec["is_chat"], s.tuco) for rec, s in zip(records, scores, strict=True) if "is_chat" in rec]
    auc = roc_auc([t for y, t in labelled if y], [t for y, t in labelled if not y])
    harm = roc_auc([t for _, t in by_set["harmful"]], [t for _, t in by_set["benign"]])
    lines += [
        "",
        f"ROC-AUC of TuCo, chat (benign + harmful) vs pre-training-like text: **{auc:.3f}**",
        f"ROC-AUC of TuCo, harmful vs benign chat requests: **{harm:.3f}**",
        "",
        "## Many-shot jailbreak (harmful requests after k faux compliant turns)",
        "",
    ]
    rows = []
    for pairs in by_set.values():
        if "shots" in pairs[0][0]:
            refused = refusal_rate([rec["refused"] for rec, _ in pairs])
            tuco = statistics.mean(t for _, t in pairs)
            rows.append([pairs[0][0]["shots"], len(pairs), tuco, f"{refused:.0%}", f"{1 - refused:.0%}"])
    lines += markdown_table(["shots", "n", "mean TuCo", "FT refusal rate", "attack success"], rows)
    lines += ["", "## FTC-alpha steering (alpha 0 is the pre-trained model, 1 the fine-tuned one)", ""]
    alphas = list(dict.fromkeys(rec["alpha"] for rec in steering))
    at = {
        (a, k): [rec for rec in steering if rec["alpha"] == a and rec["set"] == k]
        for a in alphas
        for k in KINDS
    }
    rows = [
        [
            f"{a:g}",
            *(f"{refusal_rate([x['refused'] for x in at[a, k]]):.0%} of {len(at[a, k])}" for k in KINDS),
        ]
        for a in alphas
    ]
    lines += markdown_table(["alpha", "benign requests refused", "harmful requests refused"], rows)
    for k in KINDS:
        for i, rec in enumerate(at[alphas[0], k][:2]):
            lines += ["", f"{k.capitalize()} request: *{rec['prompt'][-1]['content']}*", ""]
            lines += [f"- alpha {a:g}: {_short(at[a, k][i]['response'])!r}" for a in alphas]
    lines += [
        "",
        f"Demo run time: {seconds:.0f} s"
        + (f" ({', '.join(f'{k} {v:.0f} s' for k, v in laps.items())})" if laps else "")
        + f". The adapter was trained once, in {demo.metrics['build_seconds']} s "
        f"({demo.metrics.get('dtype', '?')} on {demo.metrics.get('cpu', '?')}), and ships with tuco.",
        "",
    ]
    return "\n".join(lines)
