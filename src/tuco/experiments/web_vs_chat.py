"""E2: random 97-token windows of web text vs chat prompts; ROC-AUC of TuCo, chat positive.

With hub access (``online``): OpenWebText windows vs the first human turn of HH-RLHF dialogues,
web text scored raw and chat prompts through the chat template (the paper's appendix E.2). Offline:
two stand-ins for web text, windows of Python's standard-library documentation (modern expository
prose: the headline) and of Gutenberg Shakespeare (``tuco.demo.texts``), vs project-written
requests on the demo recipes' held-out tasks and topics (never trained on by either demo fine-tune),
labelled as stand-ins in the table.
"""

from __future__ import annotations

import random

from ..pair import ModelPair
from ..plots import histogram
from ..stats import roc_auc
from ..tables import markdown_table
from .common import RunDirectory, as_prompt, mean


def web_and_chat_prompts(
    tokenizer, limit: int, seed: int = 0, offline: bool = True
) -> tuple[dict[str, list], list, str]:
    """({web group: its windows as raw text}, chat requests as user messages, source description).
    Offline there are two web stand-ins: Python's documentation first (the headline), Shakespeare."""
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
        web = {"web": web}
        chat = []
        for record in read_dataset("Anthropic/hh-rlhf", "test", "chosen"):
            chat.append(record.prompt.split("\n\nHuman: ")[1].split("\n\nAssistant:")[0].strip())
            if len(chat) == limit:
                break
        return web, chat, "OpenWebText windows vs HH-RLHF first human turns"
    from ..demo.texts import windows

    web = {
        "web: Python docs": [w["prompt"] for w in windows(tokenizer, limit, seed=seed, source="docs")],
        "web: Shakespeare": [w["prompt"] for w in windows(tokenizer, limit, seed=seed)],
    }
    requests = held_out_requests()
    chat = random.Random(seed).sample(requests, min(limit, len(requests)))
    source = (
        "offline stand-ins: windows of Python's documentation and of Shakespeare vs project-written "
        "held-out requests"
    )
    return web, chat, source


def held_out_requests() -> list[str]:
    """The offline chat prompts: requests on the demo recipes' held-out tasks and topics (in a seen
    and an unseen template), none of which either demo fine-tune was trained on."""
    from ..demo import chat_recipe as chat
    from ..demo import recipe as safety

    tasks = safety.BENIGN_HELD_OUT + [task for _, task in safety.tasks(safety.HARMFUL_HELD_OUT)]
    requests = [
        t.format(task=task) for task in tasks for t in (safety.TEMPLATES_TRAIN[0], safety.TEMPLATE_HELD_OUT)
    ]
    templates = (chat.QUESTION_TEMPLATES[0], chat.QUESTION_TEMPLATE_HELD_OUT)
    return requests + [t.format(topic=topic) for topic in chat.TOPICS_HELD_OUT for t in templates]


def web_vs_chat(
    pair: ModelPair,
    out: RunDirectory,
    limit: int = 100,
    system: str | None = None,
    offline: bool = True,
    seed: int = 0,
    batch_size: int = 8,
) -> str:
    web, chat, source = web_and_chat_prompts(pair.tokenizer, limit, seed, offline)
    ids = {"web": "web", "web: Python docs": "docs", "web: Shakespeare": "shakespeare"}
    items = [
        dict(id=f"{ids[group]}/{i}", group=group, label=0, prompt=p, text=p)
        for group, texts in web.items()
        for i, p in enumerate(texts)
    ]
    items += [
        dict(id=f"held-out-chat/{i}", group="chat", label=1, prompt=as_prompt(pair, p, system), text=p)
        for i, p in enumerate(chat)
    ]

    def compute(batch: list[dict]) -> list[dict]:
        scores = pair.score([it["prompt"] for it in batch], batch_size=batch_size)
        return [
            dict(id=it["id"], group=it["group"], label=it["label"], prompt=it["text"]) | s.to_dict()
            for it, s in zip(batch, scores, strict=True)
        ]

    records = out.step("scores", items, compute, batch_size, desc="E2 scores")
    t_chat = [r["tuco"] for r in records if r["group"] == "chat"]
    t_web = {group: [r["tuco"] for r in records if r["group"] == group] for group in web}
    aucs = {group: roc_auc(t_chat, tucos) for group, tucos in t_web.items()}
    headline = next(iter(web))
    auc = aucs[headline]
    rows = [[group, len(tucos), mean(tucos), aucs[group]] for group, tucos in t_web.items()]
    table = "\n".join(
        [
            "# E2: web text vs chat",
            "",
            f"Source: {source}.",
            "",
            *markdown_table(
                ["group", "n", "mean TuCo", "ROC-AUC vs chat"], [*rows, ["chat", len(chat), mean(t_chat), ""]]
            ),
            "",
            f"ROC-AUC of TuCo (chat positive) against {headline}: **{auc:.3f}** "
            "(paper: >= 0.89 for 8 of 9 models).",
            "",
        ]
    )
    fig = histogram({**t_web, "chat": t_chat}, f"E2, AUC = {auc:.3f}", bins=20)
    metrics = {
        "roc_auc": auc,
        "mean_tuco_web": mean(t_web[headline]),
        "mean_tuco_chat": mean(t_chat),
        "n_web": len(t_web[headline]),
        "n_chat": len(t_chat),
        "web_groups": {group: {"roc_auc": aucs[group], "mean_tuco": mean(t)} for group, t in t_web.items()},
    }
    return out.finish(records, table, {"tuco_histogram": fig}, metrics)
