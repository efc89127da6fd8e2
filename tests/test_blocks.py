import pytest
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
