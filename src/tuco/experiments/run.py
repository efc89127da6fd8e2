"""One-command experiments (TUCO-SPEC section 6) on any pair: so far E2, E5 and steering.

Each writes ``results.jsonl``, ``table.md`` (the headline numbers) and a PNG plot to its output
directory, and returns the table.

- ``web_vs_chat`` (E2): random 97-token windows of web text vs chat prompts; ROC-AUC of TuCo with
  chat as the positive class. With hub access: OpenWebText windows vs the first human turn of
  HH-RLHF dialogues. Offline: windows of Gutenberg Shakespeare (a stand-in for web text) vs the demo
  recipe's project-written requests, labelled as stand-ins in the table.
- ``tuco_vs_outputco`` (E5): the "Could you tell me if ...? A: No" refusal prompt for k shots;
  TuCo, OutputCo, KL, FTC norm and final-state distance vs k.
- ``steering`` (beyond the paper): refusal rate of held-out harmful and benign requests vs alpha.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..pair import ModelPair
from ..report import figure, png
from ..store import ResultsFile
from .prompts import refusal_many_shot
from .stats import roc_auc


def _chat(prompt: str, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _write(out: Path, records: list[dict], table: str, fig) -> str:
    out.mkdir(parents=True, exist_ok=True)
    with ResultsFile(out / "results.jsonl", overwrite=True) as results:
        results.write(records)
    (out / "table.md").write_text(table)
    (out / "plot.png").write_bytes(png(fig))
    return table


def web_and_chat_prompts(
    tokenizer, limit: int, seed: int = 0, offline: bool = True
) -> tuple[list, list, str]:
    """(web windows as raw text, chat requests as user messages, source description)."""
    if not offline:
        from ..data import read_dataset

        rng = random.Random(seed)
        web = []
        for record in read_dataset("Skylion007/openwebtext", "train", "text"):
            ids = tokenizer(record.prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > 97:
                start = rng.randrange(0, len(ids) - 97)
                web.append(tokenizer.decode(ids[start : start + 97]))
            if len(web) == limit:
                break
        chat = []
        for record in read_dataset("Anthropic/hh-rlhf", "test", "chosen"):
            chat.append(record.prompt.split("\n\nHuman: ")[1].split("\n\nAssistant:")[0].strip())
            if len(chat) == limit:
                break
        return web, chat, "OpenWebText windows vs HH-RLHF first human turns"
    from ..demo import recipe as r
    from ..demo.texts import windows

    web = [w["prompt"] for w in windows(tokenizer, limit, seed=seed)]
    requests = [
        t.format(task=task) for task in r.BENIGN_TRAIN + r.BENIGN_HELD_OUT for t in r.TEMPLATES_TRAIN[:2]
    ]
    requests += [t.format(task=task) for _, task in r.tasks(r.HARMFUL_TRAIN) for t in r.TEMPLATES_TRAIN[:1]]
    chat = random.Random(seed).sample(requests, min(limit, len(requests)))
    return web, chat, "offline stand-ins: Shakespeare windows vs project-written requests"


def web_vs_chat(
    pair: ModelPair,
    out: str | Path,
    limit: int = 100,
    system: str | None = None,
    offline: bool = True,
    seed: int = 0,
) -> str:
    web, chat, source = web_and_chat_prompts(pair.tokenizer, limit, seed, offline)
    scores = pair.score(web + [_chat(p, system) for p in chat], progress=True)
    records = [
        {"id": i, "group": "web" if i < len(web) else "chat", "label": int(i >= len(web)), "prompt": p}
        | s.to_dict()
        for i, (p, s) in enumerate(zip(web + chat, scores, strict=True))
    ]
    t_web, t_chat = [s.tuco for s in scores[: len(web)]], [s.tuco for s in scores[len(web) :]]
    auc = roc_auc(t_chat, t_web)
    table = "\n".join(
        [
            "# E2: web text vs chat",
            "",
            f"Source: {source}.",
            "",
            "| group | n | mean TuCo |",
            "|---|---|---|",
            f"| web | {len(web)} | {sum(t_web) / len(web):.4f} |",
            f"| chat | {len(chat)} | {sum(t_chat) / len(chat):.4f} |",
            "",
            f"ROC-AUC of TuCo (chat positive): **{auc:.3f}** (paper: >= 0.89 for 8 of 9 models).",
            "",
        ]
    )
    fig, ax = figure()
    ax.hist([t_web, t_chat], bins=20, label=["web", "chat"], alpha=0.7)
    ax.set(xlabel="TuCo", ylabel="prompts", title=f"E2, AUC = {auc:.3f}")
    ax.legend()
    return _write(Path(out), records, table, fig)


def tuco_vs_outputco(pair: ModelPair, out: str | Path, max_shots: int = 32, system: str | None = None) -> str:
    shots = list(range(1, max_shots + 1))
    prompts = [_chat(refusal_many_shot(k), system) for k in shots]
    scores = pair.score(prompts, progress=True)
    baselines = pair.output_contribution(prompts, progress=True)
    records = [
        {"id": k, "shots": k} | s.to_dict() | b.to_dict()
        for k, s, b in zip(shots, scores, baselines, strict=True)
    ]
    first, last = records[0], records[-1]
    rows = [
        f"| {r['shots']} | {r['tuco']:.4f} | {r['outputco']:.4f} | {r['kl']:.4f} | {r['ftc_norm']:.1f} "
        f"| {r['distance']:.1f} |"
        for r in records
    ]
    table = "\n".join(
        [
            "# E5: TuCo vs OutputCo on the refusal many-shot prompt",
            "",
            "| shots | TuCo | OutputCo | KL(FT||PT) | FTC norm | final-state distance |",
            "|---|---|---|---|---|---|",
            *rows,
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
    return _write(Path(out), records, table, fig)


def steering(
    pair: ModelPair,
    out: str | Path,
    alphas: list[float],
    limit: int | None = None,
    system: str | None = None,
    max_new_tokens: int = 24,
) -> str:
    """Beyond the paper: refusal rate vs alpha on held-out harmful and benign requests (the demo
    recipe's held-out tasks, seen and unseen template), greedy answers judged by refusal strings."""
    from ..demo import recipe as r
    from ..refusal import is_refusal

    templates = (r.TEMPLATES_TRAIN[0], r.TEMPLATE_HELD_OUT)
    sets = {
        "harmful": [t.format(task=task) for _, task in r.tasks(r.HARMFUL_HELD_OUT) for t in templates][
            :limit
        ],
        "benign": [t.format(task=task) for task in r.BENIGN_HELD_OUT for t in templates][:limit],
    }
    prompts = [(name, p) for name, items in sets.items() for p in items]
    chats = [_chat(p, system) for _, p in prompts]
    tucos = [s.tuco for s in pair.score(chats, progress=False)]
    records, rates = [], {}
    for alpha in alphas:
        answers = pair.generate(
            chats, alpha=alpha, max_new_tokens=max_new_tokens, do_sample=False, progress=True
        )
        for i, ((name, prompt), answer) in enumerate(zip(prompts, answers, strict=True)):
            records.append(
                {
                    "id": i,
                    "alpha": alpha,
                    "group": name,
                    "prompt": prompt,
                    "tuco": tucos[i],
                    "response": answer,
                    "refused": is_refusal(answer),
                }
            )
        for name in sets:
            judged = [rec["refused"] for rec in records if rec["alpha"] == alpha and rec["group"] == name]
            rates[alpha, name] = sum(judged) / len(judged)
    mean_tuco = {
        name: sum(t for (n, _), t in zip(prompts, tucos, strict=True) if n == name) / len(sets[name])
        for name in sets
    }
    table = "\n".join(
        [
            "# Steering: refusal rate vs alpha (x + PTC + alpha * FTC at every block)",
            "",
            f"Held-out requests: {len(sets['harmful'])} harmful, {len(sets['benign'])} benign; "
            f"mean TuCo at alpha=1: harmful {mean_tuco['harmful']:.4f}, benign {mean_tuco['benign']:.4f}.",
            "",
            "| alpha | harmful refused | benign refused |",
            "|---|---|---|",
            *[f"| {a:g} | {rates[a, 'harmful']:.0%} | {rates[a, 'benign']:.0%} |" for a in alphas],
            "",
        ]
    )
    fig, ax = figure()
    for name in sets:
        ax.plot(alphas, [rates[a, name] for a in alphas], marker="o", label=f"{name} requests")
    ax.set(xlabel="alpha", ylabel="refusal rate", title="FTC-alpha steering")
    ax.legend()
    return _write(Path(out), records, table, fig)
