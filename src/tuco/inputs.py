"""Prompts to token ids, and token ids to padded batches.

Accepted prompt forms (``Prompts``):
- a string or a list of strings: tokenized as given, with the tokenizer's usual special tokens;
- a chat (list of ``{"role", "content"}`` dicts) or a list of chats: through the tokenizer's chat
  template with the generation prompt added, one BOS only;
- a dict / ``BatchEncoding`` with ``input_ids`` [batch, seq] and optionally ``attention_mask``
  (padding on either side is stripped).
Everything becomes a list of token-id lists; ``pad`` builds a batch on the side asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

log = logging.getLogger("tuco")

Chat = list[dict[str, str]]
Prompts = str | Chat | Sequence[str | Chat] | Sequence[Sequence[int]] | Mapping[str, Any]
Side = Literal["left", "right"]
ChatFormat = Callable[[list[dict]], str]  # a chat -> its prompt text (without BOS)


def _is_chat(x: Any) -> bool:
    """A chat-like prompt: a non-empty list of dicts (checked by ``chat_problem`` before use)."""
    return isinstance(x, list) and len(x) > 0 and all(isinstance(m, Mapping) for m in x)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list | tuple) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def chat_problem(messages: list) -> str | None:
    """What is wrong with a chat (None when nothing): a non-empty list of ``{"role", "content"}``
    dicts with string values."""
    if not messages:
        return 'an empty chat: give at least one {"role": ..., "content": ...} message.'
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not {"role", "content"} <= set(m):
            return f'message {i} is not a {{"role": ..., "content": ...}} object: {m!r:.80}'
        for key in ("role", "content"):
            if not isinstance(m[key], str):
                return f"message {i}: {key!r} must be a string, not {type(m[key]).__name__}."
    return None


def encode(tokenizer, prompts: Prompts, chat_format: ChatFormat | None = None) -> list[list[int]]:
    """Token ids of every prompt (see the module docstring for the accepted forms). Empty prompts
    (or only whitespace), malformed chats and other types raise ``ValueError``/``TypeError``
    naming the prompt. ``chat_format(chat) -> text`` (a paper pair's prompt strings) formats
    chats instead of the chat template."""
    if isinstance(prompts, Mapping):
        return _from_encoding(prompts)
    if isinstance(prompts, str) or _is_chat(prompts):
        items: Sequence[Any] = [prompts]
    elif isinstance(prompts, Sequence):
        items = prompts
    else:
        raise TypeError(
            "prompts must be a string, a chat, a list of those, a list of token-id lists or a dict "
            f"with input_ids; not {type(prompts).__name__}."
        )
    if items and all(isinstance(p, list | tuple) and p and _is_ids(p) for p in items):
        return [list(p) for p in items]  # already token ids
    out = []
    for i, prompt in enumerate(items):
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError(
                    f"prompt {i} is empty{' (only whitespace)' if prompt else ''}: give it text."
                )
        elif _is_chat(prompt):
            problem = chat_problem(prompt)
            if problem:
                raise ValueError(f"prompt {i}: {problem}")
            if not any(m["content"].strip() for m in prompt):
                raise ValueError(f"prompt {i} is a chat whose messages are all empty: give one text.")
        else:
            raise TypeError(
                f"prompt {i} is a {type(prompt).__name__} ({prompt!r:.40}); expected a string, a chat "
                '(list of {"role", "content"} dicts) or a list of token ids.'
            )
        if tokenizer is None:
            raise ValueError("This pair has no tokenizer: pass tokenizer= or give token ids (input_ids).")
        if isinstance(prompt, str):
            ids = tokenizer(prompt)["input_ids"]
        elif chat_format is not None:
            try:
                text = chat_format(prompt)
            except ValueError as e:
                raise ValueError(f"prompt {i}: {e}") from None
            ids = tokenizer(text)["input_ids"]  # the tokenizer adds one BOS
        else:
            ids = _chat_ids(tokenizer, prompt)
        if len(ids) == 0:
            raise ValueError(
                f"prompt {i} is empty after tokenization: every prompt needs at least one token."
            )
        out.append(list(ids))
    return out


def _chat_ids(tokenizer, chat: Chat) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer has no chat template, so chat messages cannot be formatted. "
            "Pass plain strings, or set tokenizer.chat_template."
        )
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    # The template writes its own special tokens (BOS included): do not add them a second time.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def _from_encoding(batch: Mapping[str, Any]) -> list[list[int]]:
    if "input_ids" not in batch:
        raise ValueError(f"a dict of prompts needs 'input_ids'; got keys {sorted(map(str, batch))}.")
    ids = torch.as_tensor(batch["input_ids"])
    if ids.ndim == 1:
        ids = ids[None]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(ids.shape)
    out = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    for i, row in enumerate(out):
        if not row:
            raise ValueError(f"row {i} of input_ids has no real token (attention_mask is all zero).")
    return out


def check_ids(ids: list[list[int]], vocab_size: int, context: int | None, reserve: int = 0) -> None:
    """Refuse token ids the model cannot take: ids outside [0, vocab_size), and prompts longer than
    ``context`` positions less ``reserve`` (the tokens a generation adds). ``ValueError`` names the
    prompt and the fix."""
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"prompt {i} has no tokens: every prompt needs at least one.")
        low, high = min(row), max(row)
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"prompt {i} holds token id {low if low < 0 else high}, outside the model's vocabulary "
                f"(0..{vocab_size - 1}): were the ids made by another tokenizer?"
            )
        if context is not None and len(row) + reserve > context:
            room = f" less the {reserve} new tokens asked for" if reserve else ""
            raise ValueError(
                f"prompt {i} has {len(row)} tokens, more than the model's context of {context} "
                f"positions{room} (max_position_embeddings of its config): shorten it, or cut it "
                "(the command line: --truncate left or --truncate right)."
            )


def pad(ids: list[list[int]], pad_id: int, side: Side = "right") -> dict[str, torch.Tensor]:
    """Batch of ``input_ids``, ``attention_mask`` and ``position_ids`` ([batch, seq] each).

    Position ids count real tokens only, so that left and right padding give the same positions.
    """
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


def length_sorted(ids: list[list[int]], batch_size: int) -> tuple[list[list[int]], dict[str, int]]:
    """Batches of prompt indices, longest prompts first, and the padding this saves: token counts
    ``{"tokens": real, "sorted": padded when sorted, "input_order": padded in input order}``."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))

    def cut(sequence) -> list[list[int]]:
        sequence = list(sequence)
        return [sequence[s : s + batch_size] for s in range(0, len(sequence), batch_size)]

    def padded(chunks: list[list[int]]) -> int:
        return sum(len(c) * max(len(ids[i]) for i in c) for c in chunks)

    chunks = cut(order)
    counts = {
        "tokens": sum(map(len, ids)),
        "sorted": padded(chunks),
        "input_order": padded(cut(range(len(ids)))),
    }
    if counts["input_order"] > counts["sorted"]:
        log.info(
            "length-sorted batches: %d padded tokens instead of %d in input order (%d real)",
            counts["sorted"],
            counts["input_order"],
            counts["tokens"],
        )
    return chunks, counts


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch] index of the last real token of each row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.bool() * positions).argmax(-1)


def pad_id(tokenizer) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if token_id is not None:
            return token_id
    return 0


def candidate_ids(tokenizer, choice: str) -> list[int]:
    """First token ids of a multiple-choice answer: "Yes" right after the prompt or " Yes" after a
    space both count for the choice "Yes" (their probabilities are summed)."""
    if not isinstance(choice, str) or not choice.strip():
        raise ValueError(f"answer choice {choice!r} is empty: every choice needs text.")
    firsts = {tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (choice, " " + choice)}
    return sorted(firsts)


def choice_probs(tokenizer, probs: torch.Tensor, choices: list[str]) -> list[float]:
    """Probability of each choice from next-token probabilities ``probs`` [vocab] (``candidate_ids``).

    A first token two choices share (a lone space on byte-level tokenizers) counts for neither; a
    choice left without a token of its own cannot be told apart by one next token: ValueError."""
    firsts = [set(candidate_ids(tokenizer, c)) for c in choices]
    own = [ids - set().union(*(f for j, f in enumerate(firsts) if j != i)) for i, ids in enumerate(firsts)]
    for i, (choice, ids, mine) in enumerate(zip(choices, firsts, own, strict=True)):
        if not mine:
            other = next(choices[j] for j in range(len(choices)) if j != i and firsts[j] & ids)
            raise ValueError(
                f"choices {other!r} and {choice!r} start with the same token, so one next token cannot "
                "tell them apart: use choices that differ in their first token (e.g. A / B, Yes / No)."
            )
    return [float(probs[sorted(ids)].sum()) for ids in own]


def choose(tokenizer, probs: torch.Tensor, choices: list[str]) -> tuple[list[float], str]:
    """The multiple-choice answer of next-token probabilities ``probs`` [vocab]: the probability of
    each choice, and the most probable choice (the first one on a tie)."""
    p = choice_probs(tokenizer, probs, choices)
    return p, choices[max(range(len(p)), key=p.__getitem__)]


def as_chat(prompt: str | list[dict], system: str | None = None) -> list[dict]:
    """A chat: a string becomes one user turn; ``system`` opens it unless it opens with one already."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and (not messages or messages[0].get("role") != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages
