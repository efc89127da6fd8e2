"""The TuCo paper's nine model pairs and its prompt strings (appendix E.2), selectable by name
(``--pair llama2-7b``).

A registered pair formats every single-turn chat with ``paper_prompt`` (the paper's exact string,
not the checkpoint's own chat template, which differs for Mistral and Llama-3 and is missing for
Vicuna v1.5): ``ModelPair.prompt_format`` is set when such a pair loads, so chats never fall back to
raw text. The text has no BOS: the tokenizer adds exactly one. ``system`` is the paper's system
prompt (None: the format has none). Which v0.2 base the paper paired with Mistral-7B-Instruct-v0.2
is unknown; the community upload of the v0.2 base (rope theta 1e6, no sliding window, like the
Instruct model) is used.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, "
    "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
    "in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why "
    "instead of answering something not correct. If you don't know the answer to a question, please "
    "don't share false information."
)
MISTRAL_SYSTEM = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid harmful, "
    "unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)


# The paper's strings, {system} and {prompt} filled in (appendix E.2); each ends on the last token
# before the answer (no newline after Gemma's "model" or Llama-3's header).
FORMATS = {
    "llama2": "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{prompt} [/INST]",
    "mistral": "[INST] <<SYS>>\n{system}\n<</SYS>>\n{prompt} [/INST]",
    "llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>"
    ),
    "gemma": "<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model",
}
# [ours] Later turns of a multi-turn chat (many-shot jailbreaking): the answer, then the next user
# turn, in each family's own convention (the paper gives single-turn strings only).
NEXT_TURNS = {
    "llama2": " {answer} </s><s>[INST] {prompt} [/INST]",
    "mistral": " {answer}</s>[INST] {prompt} [/INST]",
    "llama3": (
        "\n\n{answer}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>"
    ),
    "gemma": "\n{answer}<end_of_turn>\n<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model",
}


@dataclass(frozen=True)
class PairSpec:
    name: str
    pretrained: str
    finetuned: str
    system: str | None
    format: str  # a key of FORMATS
    note: str = ""


PAIRS = {
    p.name: p
    for p in (
        PairSpec(
            "llama2-7b", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", LLAMA2_SYSTEM, "llama2"
        ),
        PairSpec(
            "llama2-13b",
            "meta-llama/Llama-2-13b-hf",
            "meta-llama/Llama-2-13b-chat-hf",
            LLAMA2_SYSTEM,
            "llama2",
        ),
        PairSpec(
            "llama3-8b",
            "meta-llama/Meta-Llama-3-8B",
            "meta-llama/Meta-Llama-3-8B-Instruct",
            LLAMA2_SYSTEM,
            "llama3",
        ),
        PairSpec("gemma-7b", "google/gemma-7b", "google/gemma-7b-it", None, "gemma"),
        PairSpec("vicuna-7b", "meta-llama/Llama-2-7b-hf", "lmsys/vicuna-7b-v1.5", LLAMA2_SYSTEM, "llama2"),
        PairSpec("vicuna-13b", "meta-llama/Llama-2-13b-hf", "lmsys/vicuna-13b-v1.5", LLAMA2_SYSTEM, "llama2"),
        PairSpec(
            "mistral-7b-v0.1",
            "mistralai/Mistral-7B-v0.1",
            "mistralai/Mistral-7B-Instruct-v0.1",
            MISTRAL_SYSTEM,
            "mistral",
        ),
        PairSpec(
            "mistral-7b-v0.2",
            "mistral-community/Mistral-7B-v0.2",
            "mistralai/Mistral-7B-Instruct-v0.2",
            MISTRAL_SYSTEM,
            "mistral",
            note="the paper's v0.2 base is unknown; the community upload of the v0.2 base is used",
        ),
        PairSpec("zephyr-gemma-7b", "google/gemma-7b", "HuggingFaceH4/zephyr-7b-gemma-v0.1", None, "gemma"),
    )
}


def get_pair(name: str) -> PairSpec:
    if name not in PAIRS:
        raise KeyError(f"unknown pair {name!r}; known: {', '.join(PAIRS)} (or give --pretrained/--finetuned)")
    return PAIRS[name]


def paper_prompt(pair_name: str, user_text: str, system: str | None = None) -> str:
    """The paper's prompt string for ``user_text`` on pair ``pair_name`` (no BOS: the tokenizer adds
    it). ``system`` replaces the paper's system prompt; a format without one refuses it."""
    messages = [{"role": "user", "content": user_text}]
    return paper_chat(
        pair_name, messages if system is None else [{"role": "system", "content": system}, *messages]
    )


def paper_chat(pair_name: str, chat: list[dict]) -> str:
    """A chat (an optional system message, then user / assistant turns ending on a user turn) in the
    paper's format of ``pair_name``: its single-turn string, later turns as ``NEXT_TURNS``."""
    spec = get_pair(pair_name)
    system = chat[0]["content"] if chat and chat[0]["role"] == "system" else None
    turns = chat[1:] if system is not None else chat
    roles = [m["role"] for m in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise ValueError(
            f"the paper's {spec.format} format takes user and assistant turns in turn, ending on a user "
            f"turn (after an optional system message), not {roles}"
        )
    template = FORMATS[spec.format]
    if system is not None and "{system}" not in template:
        raise ValueError(f"the paper's {spec.format} format ({pair_name}) has no system prompt")
    fill = (spec.system if system is None else system) or ""
    head, tail = template.split("{prompt}")
    text = head.replace("{system}", fill) + turns[0]["content"] + tail.replace("{system}", fill)
    for answer, user in zip(turns[1::2], turns[2::2], strict=True):
        before, after = NEXT_TURNS[spec.format].split("{prompt}")
        text += before.replace("{answer}", answer["content"]) + user["content"] + after
    return text
