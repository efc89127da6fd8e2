"""``tuco.pair_base``: the pair's state and primitive operations, enough for the modules below ModelPair."""

import contextlib
import copy

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import baselines, decoding, inputs
from tuco.decompose import Decomposition, pt_blocks_needed
from tuco.pair_base import PairBase
from tuco.sampling import Sampling
from tuco.testing import perturbed_copy, tiny_model


def test_the_one_rule_for_which_pt_blocks_run():
    assert pt_blocks_needed(1.0, "nothing") == "none"
    assert pt_blocks_needed(1.0, "last") == "last"
    assert pt_blocks_needed(1.0, "all") == "all"
    assert {pt_blocks_needed(0.5, r) for r in ("nothing", "last", "all")} == {"all"}
    with pytest.raises(ValueError, match="reads must be"):
        pt_blocks_needed(1.0, "some")


def test_steered_follows_the_rule(tok):
    pair = make_pair("llama", tok)
    assert isinstance(pair.steered(1.0), contextlib.nullcontext)
    last = pair.steered(1.0, "last")
    assert isinstance(last, Decomposition) and last.last_only
    steered = pair.steered(0.5, "last")
    assert isinstance(steered, Decomposition) and not steered.last_only and steered.alpha == 0.5


def test_a_plain_base_is_enough_for_decoding_and_the_baselines(tok):
    pt = tiny_model("llama")
    base = PairBase(pt, perturbed_copy(pt, scale=0.3), tok)
    full = make_pair("llama", tok)
    ids = base.encode(PROMPTS)
    events = [e for step in decoding.decode(base, ids, [Sampling(max_new_tokens=3)] * len(ids)) for e in step]
    same = [e for step in full.decode(ids, [Sampling(max_new_tokens=3)] * len(ids)) for e in step]
    assert [(e.index, e.token_id) for e in events] == [(e.index, e.token_id) for e in same]
    batch = inputs.pad(ids, base.pad_id, "left")
    assert len(baselines.output_contribution_of(base)(batch)) == len(ids)


def test_the_context_is_the_smaller_of_the_config_s_and_the_tokenizer_s(tok):
    pair = make_pair("llama", tok)
    config = pair.finetuned.config.max_position_embeddings
    assert pair.context_length == config and pair.room(10) == config - 10
    short = copy.copy(tok)
    short.model_max_length = 40
    limited = PairBase(pair.pretrained, pair.finetuned, short)
    assert limited.context_length == 40
    with pytest.raises(ValueError, match="more than the model's context of 40"):
        limited.check_prompts([[5] * 38], reserve=3)


def test_state_comes_from_the_constructor(tok):
    pt = tiny_model("llama")

    def fmt(chat):
        return chat[-1]["content"]

    base = PairBase(pt, perturbed_copy(pt), tok, prompt_format=fmt, dtype_reason="explicit")
    assert base.prompt_format is fmt and base.dtype_reason == "explicit" and base.padding == {}
    assert base.encode([[{"role": "user", "content": "Hi"}]]) == base.encode(["Hi"])


def lora_pair(tok, arch="gemma3_text"):
    from peft import LoraConfig, get_peft_model

    from tuco import ModelPair

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(tiny_model(arch), LoraConfig(r=4, target_modules=targets))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.3)
    return ModelPair(finetuned=peft_model, tokenizer=tok)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_merged_adapter_gives_the_same_tuco_logits_and_tokens(arch, tok):
    pair = lora_pair(tok, arch)
    ids = pair.encode(PROMPTS)
    before = pair.score(ids, alpha=0.7, per_token=True, fast=False)
    fast = pair.score(ids)
    generated = pair.generate_with_tuco(ids, 1.0, max_new_tokens=5)
    outputco = pair.output_contribution(PROMPTS)
    assert pair.merge_adapter() is None and pair.merged_adapter
    layers = [m for m in pair.ft_blocks.modules() if hasattr(m, "lora_A")]
    assert layers and all(m.merged for m in layers)  # the FT side runs the merged weights alone
    after = pair.score(ids, alpha=0.7, per_token=True, fast=False)
    for a, b in zip(before, after, strict=True):
        assert b.tuco == pytest.approx(a.tuco, abs=1e-5)
        assert b.tuco_tokens == pytest.approx(a.tuco_tokens, abs=1e-5)
    assert [r.tuco for r in pair.score(ids)] == pytest.approx([r.tuco for r in fast], abs=1e-5)  # lastpos too
    for a, b in zip(generated, pair.generate_with_tuco(ids, 1.0, max_new_tokens=5), strict=True):
        assert a.token_ids == b.token_ids and b.tokens_tuco == pytest.approx(a.tokens_tuco, abs=1e-5)
    again = pair.output_contribution(PROMPTS)  # the PT model whole: the adapter subtracted, not unmerged
    assert [x.kl for x in again] == pytest.approx([x.kl for x in outputco], abs=1e-5)
    assert all(m.merged for m in layers)  # nothing unmerged it on the way


def test_only_plain_float32_adapters_merge(tok):
    assert make_pair("llama", tok).merge_adapter() == "not a base + adapter pair"
    pair = lora_pair(tok, "llama")
    pair.finetuned.to(torch.bfloat16)
    assert "round" in pair.merge_adapter() and not pair.merged_adapter
