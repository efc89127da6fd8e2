"""The hardening sweep of the library: what the command line refuses, the API refuses too, with an
error naming the argument (``ValueError``/``TypeError``, or one of ``tuco.errors``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tuco import ModelPair, inputs
from tuco.errors import ModelError, UsageError
from tuco.store import ResultsFile
from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model


@dataclass
class ApiCase:
    id: str
    call: Callable[[Any], Any]
    error: type
    match: str


@pytest.fixture(scope="module")
def p(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    tok = byte_tokenizer()
    pt, gpt2 = tiny_model("llama"), tiny_model("gpt2")
    ft = perturbed_copy(pt, scale=0.3)
    for name, model in {"pt": pt, "ft": ft}.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "r.jsonl").write_text('{"id": 1}\n')
    return SimpleNamespace(
        llama=ModelPair(pt, ft, tok),
        gpt2=ModelPair(gpt2, perturbed_copy(gpt2, scale=0.3), tok),
        other=tiny_model("llama", num_hidden_layers=2),
        pt=pt,
        tok=tok,
        root=root,
    )


def chat(**message) -> list[dict]:
    return [message]


def pick(p, choices):
    return inputs.choose(p.tok, torch.zeros(272), choices)


API_CASES = [
    ApiCase("prompts-int", lambda p: p.llama.score(5), TypeError, "prompts must be a string"),
    ApiCase("prompts-none", lambda p: p.llama.score(None), TypeError, "not NoneType"),
    ApiCase("prompt-empty", lambda p: p.llama.score(""), ValueError, "prompt 0 is empty"),
    ApiCase(
        "prompt-blank",
        lambda p: p.llama.score(["ok", "  "]),
        ValueError,
        r"prompt 1 is empty \(only whitespace\)",
    ),
    ApiCase("prompt-int-in-list", lambda p: p.llama.score(["ok", 3]), TypeError, "prompt 1 is a int"),
    ApiCase(
        "chat-all-blank", lambda p: p.llama.score(chat(role="user", content=" ")), ValueError, "all empty"
    ),
    ApiCase("chat-no-content", lambda p: p.llama.score(chat(role="user")), ValueError, "message 0 is not"),
    ApiCase(
        "chat-role-int",
        lambda p: p.llama.score(chat(role=1, content="x")),
        ValueError,
        "'role' must be a string",
    ),
    ApiCase(
        "chat-content-list",
        lambda p: p.llama.score(chat(role="user", content=["x"])),
        ValueError,
        "'content' must",
    ),
    ApiCase(
        "batch-size-0",
        lambda p: p.llama.score("x", batch_size=0),
        ValueError,
        "batch_size must be at least 1",
    ),
    ApiCase(
        "batch-size-float",
        lambda p: p.llama.score("x", batch_size=2.5),
        TypeError,
        "batch_size must be an integer",
    ),
    ApiCase(
        "batch-size-bool",
        lambda p: p.llama.score("x", batch_size=True),
        TypeError,
        "batch_size must be an integer",
    ),
    ApiCase(
        "alpha-nan",
        lambda p: p.llama.score("x", alpha=float("nan")),
        ValueError,
        "alpha must be a finite number",
    ),
    ApiCase(
        "alpha-inf",
        lambda p: p.llama.score("x", alpha=float("inf")),
        ValueError,
        "alpha must be a finite number",
    ),
    ApiCase(
        "alpha-text",
        lambda p: p.llama.score("x", alpha="1"),
        TypeError,
        "alpha must be a finite number, not str",
    ),
    ApiCase(
        "alpha-none", lambda p: p.llama.score("x", alpha=None), TypeError, "alpha must be a finite number"
    ),
    ApiCase("norm", lambda p: p.llama.score("x", norm="l3"), ValueError, "norm must be one of 'l1', 'l2'"),
    ApiCase(
        "padding-side",
        lambda p: p.llama.score("x", padding_side="middle", fast=False),
        ValueError,
        "padding_side",
    ),
    ApiCase(
        "ids-over-vocab", lambda p: p.llama.score([[1, 2, 9999]]), ValueError, "token id 9999, outside the"
    ),
    ApiCase("ids-negative", lambda p: p.llama.score([[-1, 2]]), ValueError, "token id -1"),
    ApiCase(
        "over-context",
        lambda p: p.gpt2.score("x" * 300),
        ValueError,
        "301 tokens, more than the model's context of 256",
    ),
    ApiCase(
        "generate-over-context",
        lambda p: p.gpt2.generate("x" * 250, max_new_tokens=10),
        ValueError,
        "less the 10 new",
    ),
    ApiCase(
        "generate-0-tokens",
        lambda p: p.llama.generate("x", max_new_tokens=0),
        ValueError,
        "max_new_tokens must be at",
    ),
    ApiCase(
        "generate-alpha-nan",
        lambda p: p.llama.generate("x", alpha=float("nan")),
        ValueError,
        "alpha must be a finite",
    ),
    ApiCase(
        "logits-alpha-inf",
        lambda p: p.llama.logits("x", alpha=float("inf")),
        ValueError,
        "alpha must be a finite",
    ),
    ApiCase(
        "logits-ids-over-vocab",
        lambda p: p.llama.logits([[9999]]),
        ValueError,
        "outside the model's vocabulary",
    ),
    ApiCase(
        "probs-token-id",
        lambda p: p.llama.next_token_probs("x", token_ids=[9999]),
        ValueError,
        "outside the model's",
    ),
    ApiCase("steer-alpha-nan", lambda p: p.llama.steer(float("nan")), ValueError, "alpha must be a finite"),
    ApiCase(
        "steer-alpha-text",
        lambda p: p.llama.steer("big"),
        TypeError,
        "alpha must be a finite number, not str",
    ),
    ApiCase(
        "dict-without-input-ids", lambda p: p.llama.score({"ids": [[1]]}), ValueError, "needs 'input_ids'"
    ),
    ApiCase(
        "mask-all-zero",
        lambda p: p.llama.score({"input_ids": [[1, 2]], "attention_mask": [[0, 0]]}),
        ValueError,
        "no real",
    ),
    ApiCase("pair-without-finetuned", lambda p: ModelPair(p.pt, None, p.tok), ValueError, "needs finetuned="),
    ApiCase("pair-incompatible", lambda p: ModelPair(p.pt, p.other, p.tok), ModelError, "num_hidden_layers"),
    ApiCase(
        "load-missing",
        lambda p: ModelPair.from_pretrained(str(p.root / "no"), str(p.root / "ft")),
        ModelError,
        "pretrained",
    ),
    ApiCase(
        "load-dtype",
        lambda p: ModelPair.from_pretrained(str(p.root / "pt"), str(p.root / "ft"), dtype="x"),
        ValueError,
        "dtype",
    ),
    ApiCase(
        "load-neither",
        lambda p: ModelPair.from_pretrained(str(p.root / "pt")),
        ValueError,
        "exactly one of finetuned=",
    ),
    ApiCase(
        "choices-same-token", lambda p: pick(p, ["Yes", "Yesterday"]), ValueError, "start with the same token"
    ),
    ApiCase("choices-repeated", lambda p: pick(p, ["No", "No"]), ValueError, "start with the same token"),
    ApiCase("choice-empty", lambda p: pick(p, ["", "No"]), ValueError, "is empty"),
    ApiCase("results-directory", lambda p: ResultsFile(p.root), UsageError, "is a directory"),
    ApiCase(
        "resume-and-overwrite",
        lambda p: ResultsFile(p.root / "r.jsonl", resume=True, overwrite=True),
        UsageError,
        "not both",
    ),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_case(case, p):
    with pytest.raises(case.error) as info:
        case.call(p)
    assert re.search(case.match, str(info.value)), str(info.value)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral", "qwen3_moe", "lfm2", "gemma3"])
def test_context_length_comes_from_the_text_config(family, tok):
    """Dense, MoE, hybrid convolution and multimodal wrappers: the context is the text config's, and
    a longer prompt is refused before any forward."""
    pt = tiny_model(family)
    pair = ModelPair(pt, perturbed_copy(pt, scale=0.1), tok)
    context = pt.config.get_text_config().max_position_embeddings
    assert pair.context_length == context and pair.vocab_size == 272
    with pytest.raises(ValueError, match=f"more than the model's context of {context}"):
        pair.score([[5] * (context + 1)])
    assert len(pair.score([[5, 6, 7]])) == 1


def test_the_sweep_covers_every_class():
    """At least 100 bad inputs across the command line and the library; at least 9 in every class."""
    import test_hardening_inputs
    import test_hardening_outputs

    classes = test_hardening_inputs.CLASSES | test_hardening_outputs.CLASSES | {"library": API_CASES}
    bad = sum(case.rc != 0 for cases in classes.values() if cases is not API_CASES for case in cases)
    assert bad + len(API_CASES) >= 100
    assert min(len(cases) for cases in classes.values()) >= 9
