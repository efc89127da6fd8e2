import pytest
import torch
import torch.nn as nn

from tuco import BlockDiscoveryError, find_blocks
from tuco.testing import ARCHITECTURES, tiny_model

EXPECTED_PATH = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "opt": "model.decoder.layers"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_finds_the_decoder_blocks(arch):
    model = tiny_model(arch)
    blocks = find_blocks(model)
    path = EXPECTED_PATH.get(arch, "model.layers")
    assert blocks is model.get_submodule(path)
    assert len(blocks) == model.config.num_hidden_layers


def test_explicit_path_overrides_discovery():
    model = tiny_model("llama")
    assert find_blocks(model, "model.layers") is model.model.layers


def test_bad_explicit_path_names_the_missing_attribute():
    model = tiny_model("llama")
    with pytest.raises(BlockDiscoveryError, match="has no attribute 'blocks'"):
        find_blocks(model, "model.blocks")
    with pytest.raises(BlockDiscoveryError, match="not an nn.ModuleList"):
        find_blocks(model, "model.norm")


def test_unknown_layout_says_how_to_override():
    class Exotic(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))

    with pytest.raises(BlockDiscoveryError, match='block_path="model.layers"'):
        find_blocks(Exotic())


def test_finds_blocks_inside_a_peft_model():
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    blocks = model.model.layers
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert find_blocks(peft_model) is blocks


def test_the_unembedding_gets_a_contiguous_input_and_the_same_logits(tok):
    """transformers slices the last position for logits_to_keep; torch's CPU linear is slow on the
    slice (bf16: 80x), so ModelPair hands the unembedding a contiguous copy: same numbers."""
    from tuco import ModelPair
    from tuco.testing import perturbed_copy, tiny_model

    pt = tiny_model("llama")
    ft = perturbed_copy(pt, scale=0.3)
    ids = torch.randint(3, 200, (3, 7))
    before = ft(ids, logits_to_keep=1).logits
    seen = []
    pair = ModelPair(pt, ft, tok)
    ModelPair(pt, ft, tok)  # a second pair over the same models adds no second hook
    assert len(ft.lm_head._forward_pre_hooks) == 1
    ft.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    assert torch.equal(pair.finetuned(ids, logits_to_keep=1).logits, before)
    assert seen == [True]
