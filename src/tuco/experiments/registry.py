"""The TuCo paper's nine model pairs (and its appendix E.2 prompts), selectable by name
(``--pair llama2-7b``).

Prompts go through each fine-tuned model's own chat template; ``system`` is the system prompt the
paper used (None: no system message). Which v0.2 base the paper paired with Mistral-7B-Instruct-v0.2
is unknown; Mistral-7B-v0.1 is the closest public base and is marked as such.
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


@dataclass(frozen=True)
class PairSpec:
    name: str
    pretrained: str
    finetuned: str
    system: str | None
    note: str = ""


PAIRS = {
    p.name: p
    for p in (
        PairSpec("llama2-7b", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", LLAMA2_SYSTEM),
        PairSpec("llama2-13b", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf", LLAMA2_SYSTEM),
        PairSpec(
            "llama3-8b", "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct", LLAMA2_SYSTEM
        ),
        PairSpec("gemma-7b", "google/gemma-7b", "google/gemma-7b-it", None),
        PairSpec("vicuna-7b", "meta-llama/Llama-2-7b-hf", "lmsys/vicuna-7b-v1.5", LLAMA2_SYSTEM),
        PairSpec("vicuna-13b", "meta-llama/Llama-2-13b-hf", "lmsys/vicuna-13b-v1.5", LLAMA2_SYSTEM),
        PairSpec(
            "mistral-7b-v0.1",
            "mistralai/Mistral-7B-v0.1",
            "mistralai/Mistral-7B-Instruct-v0.1",
            MISTRAL_SYSTEM,
        ),
        PairSpec(
            "mistral-7b-v0.2",
            "mistralai/Mistral-7B-v0.1",
            "mistralai/Mistral-7B-Instruct-v0.2",
            MISTRAL_SYSTEM,
            note="the paper's v0.2 base is unknown; v0.1 base used",
        ),
        PairSpec("zephyr-gemma-7b", "google/gemma-7b", "HuggingFaceH4/zephyr-7b-gemma-v0.1", None),
    )
}


def get_pair(name: str) -> PairSpec:
    if name not in PAIRS:
        raise KeyError(f"unknown pair {name!r}; known: {', '.join(PAIRS)} (or give --pretrained/--finetuned)")
    return PAIRS[name]
