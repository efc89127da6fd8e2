"""The paper's pairs and prompt strings (appendix E.2): exact text, one BOS, never raw text."""

import functools

import pytest

from tuco import ModelPair, registry
from tuco.experiments.common import as_prompt
from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model

SYSTEM = registry.LLAMA2_SYSTEM


def test_paper_prompt_strings_are_the_papers():
    assert registry.paper_prompt("llama2-7b", "Hi") == f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nHi [/INST]"
    assert registry.paper_prompt("vicuna-13b", "Hi") == f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nHi [/INST]"
    mistral = registry.paper_prompt("mistral-7b-v0.1", "Hi")
    assert mistral == f"[INST] <<SYS>>\n{registry.MISTRAL_SYSTEM}\n<</SYS>>\nHi [/INST]"  # one newline
    assert registry.MISTRAL_SYSTEM.startswith("Always assist with care, respect, and truth.")
    gemma = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model"  # no newline at the end
    assert registry.paper_prompt("gemma-7b", "Hi") == registry.paper_prompt("zephyr-gemma-7b", "Hi") == gemma
    llama3 = registry.paper_prompt("llama3-8b", "Hi")
    assert llama3 == (
        f"<|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )
    assert not any(
        registry.paper_prompt(name, "x").startswith(("<s>", "<bos>", "<|begin")) for name in registry.PAIRS
    )
    assert registry.paper_prompt("llama2-7b", "a {prompt} {system}", system="S {prompt}").endswith(
        "S {prompt}\n<</SYS>>\n\na {prompt} {system} [/INST]"
    )  # braces in the texts stay as they are
    with pytest.raises(ValueError, match="has no system prompt"):
        registry.paper_prompt("gemma-7b", "Hi", system="Be brief.")


def test_mistral_v02_pairs_a_v02_base():
    spec = registry.get_pair("mistral-7b-v0.2")
    assert "v0.2" in spec.pretrained and "v0.2" in spec.finetuned


def test_a_registered_pair_formats_chats_with_the_paper_string_never_raw_text():
    tok = byte_tokenizer()
    tok.chat_template = None  # like Vicuna v1.5: no chat template
    pt = tiny_model("llama")
    pair = ModelPair(pt, perturbed_copy(pt), tok)
    assert as_prompt(pair, "Hi") == "Hi"  # an unregistered pair without a template: raw text
    pair.prompt_format = functools.partial(registry.paper_chat, "vicuna-7b")
    chat = as_prompt(pair, "Hi")
    assert chat == [{"role": "user", "content": "Hi"}]
    ids = pair.encode([chat])[0]
    assert ids == tok(registry.paper_prompt("vicuna-7b", "Hi"))["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids[-7:]) == "[/INST]"
    with_system = pair.encode([as_prompt(pair, "Hi", "Be brief.")])[0]
    assert tok.decode(with_system).startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>")
    turns = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    text = tok.decode(pair.encode([turns])[0])
    assert text.endswith("\n\na [/INST] b </s><s>[INST] c [/INST]")  # many-shot: later turns (ours)
    with pytest.raises(ValueError, match="prompt 0: the paper's llama2 format takes user and assistant"):
        pair.encode([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]])


def test_loading_a_registered_pair_sets_its_prompt_format(tmp_path):
    from tuco import models

    tok = byte_tokenizer()
    pt = tiny_model("llama")
    for name, model in {"pt": pt, "ft": perturbed_copy(pt)}.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    chosen = models.Models("gemma-7b", str(tmp_path / "pt"), str(tmp_path / "ft"), None, "llama")
    pair = models.load(chosen, dtype="float32", device="cpu")
    assert pair.prompt_format([{"role": "user", "content": "Hi"}]) == registry.paper_prompt("gemma-7b", "Hi")
    plain = models.load(
        models.Models(None, str(tmp_path / "pt"), str(tmp_path / "ft"), None, "llama"), device="cpu"
    )
    assert plain.prompt_format is None


def test_multi_turn_chats_in_each_family():
    chat = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    gemma = registry.paper_chat("gemma-7b", chat)
    assert gemma == (
        "<start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
        "<start_of_turn>user\nc<end_of_turn>\n<start_of_turn>model"
    )
    assert registry.paper_chat("mistral-7b-v0.1", chat).endswith("\na [/INST] b</s>[INST] c [/INST]")
    assert registry.paper_chat("llama3-8b", chat).endswith(
        "assistant<|end_header_id|>\n\nb<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nc<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>"
    )
