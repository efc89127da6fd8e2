"""The one build both demo recipes fill in: shipped or cached adapter, else train, judge, save.

    >>> build_adapter(SAFETY, recipe, home, force, dtype, device, ship)   # what build() does

A ``Kind`` names what differs between the demo pairs (the base weights, where the adapter ships,
how to rebuild it) and gives ``train(recipe, home, dtype, device)``: the recipe's own steps (its
data, the LoRA fine-tune through ``train_lora``, the held-out judgement through ``greedy``), which
return the PEFT model and its metrics. The rest is here, once: the shipped adapter when the recipe
is the default one (checked against its recipe hash), the cache in ``$TUCO_HOME/<prefix>-<hash>/``,
the dtype from the hardware, and the save: to a temporary directory first, renamed at the end, so an
interrupted build leaves no half-made cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import inputs
from ..embedded import tuco_home
from ..hardware import cpu_capability, resolve_dtype

log = logging.getLogger("tuco")


class StaleAdapterError(RuntimeError):
    """The shipped adapter was trained from another recipe than the current one."""


@dataclass
class DemoPair:
    pretrained: Path  # the converted pre-trained model directory
    adapter: Path  # the LoRA adapter directory (with its metrics.json)
    metrics: dict
    name: str = "demo-safety"
    title: str = "SmolLM2-135M-Instruct (PT) vs its LoRA safety fine-tune (FT)"


@dataclass
class Kind:
    """What one demo pair's build needs beyond the skeleton."""

    prefix: str  # cache directory: $TUCO_HOME/<prefix>-<recipe hash>
    default: Any  # the default recipe: its adapter is shipped
    shipped: Path  # where the default recipe's adapter is committed
    recipe_file: str  # where the recipe is written (named in StaleAdapterError)
    rebuild: str  # the command that rebuilds and ships the adapter
    pretrained: Callable[[], Path]  # the base model's directory
    base_name: str  # base_model_name_or_path written into adapter_config.json
    train: Callable[..., tuple[Any, dict]]  # (recipe, home, dtype, device) -> (PEFT model, metrics)
    saved_adapter: str | None = None  # the one adapter saved, where the model holds others (stacked)


def shipped_metrics(kind: Kind) -> dict:
    """The metrics saved with the shipped adapter; an error if it is missing or not the current recipe's."""
    return check_shipped(kind.shipped, kind.default.hash(), kind.recipe_file, kind.rebuild)


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


def build_adapter(
    kind: Kind,
    recipe: Any = None,
    *,
    home: Path | None = None,
    force: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    ship: bool = False,
) -> DemoPair:
    """The demo pair of ``recipe`` (default: ``kind.default``): shipped, cached, or built now."""
    recipe = recipe or kind.default
    home = Path(home or tuco_home())
    out = home / f"{kind.prefix}-{recipe.hash()}"
    pt_dir = kind.pretrained()
    if not force and recipe == kind.default:
        return DemoPair(pt_dir, kind.shipped, shipped_metrics(kind))
    if not force and (out / "metrics.json").is_file():
        return DemoPair(pt_dir, out, json.loads((out / "metrics.json").read_text()))
    start = time.perf_counter()
    chosen, why = resolve_dtype(dtype, device, torch.float32)
    log.info("%s build: %s on %s (%s)", kind.prefix, chosen, device, why)
    peft_model, trained = kind.train(recipe, home, chosen, device)
    metrics = {
        "recipe": recipe.hash(),
        "dtype": str(chosen).removeprefix("torch."),
        "device": device,
        "cpu": cpu_capability(),
        "torch": torch.__version__,
        **trained,
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if kind.saved_adapter is None:
        peft_model.save_pretrained(tmp)
    else:  # "default" is saved at the top of tmp, as a lone adapter is
        peft_model.save_pretrained(tmp, selected_adapters=[kind.saved_adapter])
    config = json.loads((tmp / "adapter_config.json").read_text())  # no path of this machine in it
    config["base_model_name_or_path"] = kind.base_name
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    metrics["build_seconds"] = round(time.perf_counter() - start, 1)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if ship:
        if recipe != kind.default:
            raise ValueError("Only the default recipe's adapter is shipped.")
        kind.shipped.mkdir(exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
            shutil.copy2(out / name, kind.shipped / name)
        return DemoPair(pt_dir, kind.shipped, shipped_metrics(kind))
    return DemoPair(pt_dir, out, json.loads((out / "metrics.json").read_text()))


class Clock:
    """Seconds per step: ``clock.lap("train")`` after each; ``laps`` the times, ``seconds`` them
    rounded to tenths (for metrics files)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step], self._last = now - self._last, now

    @property
    def seconds(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.laps.items()}


def greedy(
    model, tok, chats: list, max_new_tokens: int, desc: str, batch: int = 16
) -> list[tuple[str, bool]]:
    """Greedy answers in left-padded batches, as (text, ended): ``ended`` when the model stopped on
    an end-of-sequence id of its generation config within ``max_new_tokens``."""
    stops = model.generation_config.eos_token_id
    stops = set(stops if isinstance(stops, list) else [stops])
    out: list[tuple[str, bool]] = []
    for start in tqdm(range(0, len(chats), batch), desc=desc, unit="batch", leave=False):
        enc = inputs.pad(inputs.encode(tok, chats[start : start + batch]), inputs.pad_id(tok), "left")
        enc.pop("position_ids")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.inference_mode():
            ids = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=inputs.pad_id(tok)
            )
        for row in ids[:, enc["input_ids"].shape[1] :].tolist():
            out.append((tok.decode(row, skip_special_tokens=True), any(t in stops for t in row)))
    return out


def train_lora(
    model,
    rows: list[tuple[list[int], list[int]]],
    streams: list[list[int]],
    per_batch: tuple[int, ...],
    recipe,
    pad_id: int,
    stack_on: list[str] | None = None,
):
    """LoRA fine-tune on ``rows`` of (token ids, labels with -100 off the answer). Each batch takes
    ``per_batch[k]`` rows from ``streams[k]`` (row indices, reshuffled at each pass); linear decay
    of the learning rate; fixed seed. Returns (the PEFT model in eval mode, the loss of each step).
    ``stack_on``: ``model`` is a PEFT model already holding these adapters; the new one ("default")
    is trained on top of them, active together and frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(recipe.targets),
        task_type="CAUSAL_LM",
    )
    if stack_on:
        model.add_adapter("default", config)
        model.base_model.set_adapter([*stack_on, "default"])
        for name, p in model.named_parameters():
            p.requires_grad = ".default." in name
        peft_model = model
    else:
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
