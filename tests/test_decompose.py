"""Exactness of the decomposition on every supported architecture (tiny random models)."""

import copy

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import Decomposition, ModelPair, inputs
from tuco.testing import ARCHITECTURES, tiny_model


def _batch(pair, side="right"):
    return inputs.pad(pair.encode(PROMPTS), 0, side)


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_alpha_one_leaves_the_ft_forward_bit_for_bit(arch, tok):
    pair = make_pair(arch, tok)
    batch = _batch(pair)
    plain = pair.finetuned(**batch).logits
    with pair.steer(1.0) as dec:
        dec.record(inputs.last_index(batch["attention_mask"]), per_token=True)
        hooked = pair.finetuned(**batch).logits
    assert torch.equal(plain, hooked)


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_components_sum_to_the_raw_final_stream(arch, tok):
    """x_L = x_0 + sum PTC + sum FTC at every real position, x_L before the final norm."""
    pair = make_pair(arch, tok)
    batch = _batch(pair)
    seen = {}

    def grab_x0(module, args, kwargs):
        seen["x0"] = (args[0] if args else kwargs["hidden_states"]).clone()

    h0 = pair.ft_blocks[0].register_forward_pre_hook(grab_x0, with_kwargs=True)
    hl = pair.ft_blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("xL", out.clone()))
    try:
        with pair.steer(1.0) as dec:
            rec = dec.record(inputs.last_index(batch["attention_mask"]), per_token=True)
            pair.finetuned(**batch)
    finally:
        h0.remove()
        hl.remove()
    mask = batch["attention_mask"].bool()
    rebuilt = seen["x0"] + rec.ptc_tokens + rec.ftc_tokens
    scale = seen["xL"].abs().max()
    assert (rebuilt - seen["xL"])[mask].abs().max() <= 1e-5 * scale
    rows = torch.arange(len(mask))
    last = inputs.last_index(batch["attention_mask"])
    at_last = seen["x0"][rows, last] + rec.ptc_sum + rec.ftc_sum
    assert (at_last - seen["xL"][rows, last]).abs().max() <= 1e-5 * scale
    assert rec.ftc_sum.abs().sum() > 0  # the models really differ


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_identical_models_have_no_fine_tuning_component(arch, tok):
    pt = tiny_model(arch)
    pair = ModelPair(pt, copy.deepcopy(pt), tok)
    for result in pair.score(PROMPTS, fast=False):  # the PT block on the FT block's own inputs: exact
        assert result.tuco == 0.0 and result.ftc_norm == 0.0 and result.ptc_norm > 0
        assert all(f == 0.0 for f in result.ftc_layers)
    for result in pair.score(PROMPTS):  # last position alone: zero up to float32 rounding
        assert result.tuco < 1e-6 and result.ftc_norm < 1e-6 * result.ptc_norm


@torch.no_grad()
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_alpha_zero_is_the_pretrained_model_when_only_blocks_differ(arch, tok):
    pair = make_pair(arch, tok)
    batch = _batch(pair)
    mask = batch["attention_mask"].bool()
    pt_logits = pair.pretrained(**batch).logits
    alpha0 = pair.logits(PROMPTS, alpha=0.0, padding_side="right")
    ft_logits = pair.finetuned(**batch).logits
    assert (alpha0 - pt_logits)[mask].abs().max() <= 1e-5
    assert (ft_logits - pt_logits)[mask].abs().max() > 1e-3  # and alpha does something


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tuco_is_a_share(arch, tok):
    for r in make_pair(arch, tok).score(PROMPTS):
        assert 0.0 < r.tuco < 1.0
        assert abs(r.beta[-1] - r.tuco) < 1e-6
        assert len(r.ptc_layers) == len(r.ftc_layers) == len(r.beta) == make_pair(arch, tok).num_layers


@torch.no_grad()
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.5])
def test_alpha_stream_matches_a_naive_block_loop(arch, alpha, tok):
    """Reference: x_{l+1} = x_l + PTC_l + alpha FTC_l, block by block, with the block arguments
    transformers passes (captured once), against the steered model's final raw stream."""
    pair = make_pair(arch, tok)
    batch = _batch(pair)
    calls = []
    handles = [
        b.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)), with_kwargs=True)
        for b in pair.ft_blocks
    ]
    try:
        pair.finetuned(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    x = calls[0][0][0] if calls[0][0] else calls[0][1]["hidden_states"]
    for layer, (args, kwargs) in enumerate(calls):
        rest, kwargs = args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}
        pt_out = pair.pt_blocks[layer](x, *rest, **kwargs)
        ft_out = pair.ft_blocks[layer](x, *rest, **kwargs)
        ptc, ftc = pt_out - x, ft_out - pt_out
        x = x + ptc + alpha * ftc

    seen = {}
    with pair.steer(alpha):  # registered after the steering hook: sees the steered output
        handle = pair.ft_blocks[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("xL", out))
        try:
            pair.finetuned(**batch, use_cache=False)
        finally:
            handle.remove()
    mask = batch["attention_mask"].bool()
    assert (seen["xL"] - x)[mask].abs().max() <= 1e-5 * x.abs().max()


def test_decomposition_rejects_mismatched_block_lists():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="3 FT blocks but 2 PT blocks"):
        Decomposition(model.model.layers, model.model.layers[:2])


@torch.no_grad()
def test_hooks_are_removed_on_exit(tok):
    pair = make_pair("llama", tok)
    with pair.steer(0.5):
        assert all(len(b._forward_hooks) == 1 for b in pair.ft_blocks)
    assert all(len(b._forward_hooks) == 0 and len(b._forward_pre_hooks) == 0 for b in pair.ft_blocks)


@torch.no_grad()
def test_record_keeps_no_per_layer_activations(tok):
    """Without per_token, what is kept is each block's PTC and FTC at the last token, [batch, d]
    each: nothing grows with seq."""
    pair = make_pair("llama", tok)

    def kept_elements(seq_len):
        ids = torch.randint(3, 200, (2, seq_len))
        with pair.steer(1.0) as dec:
            rec = dec.record(torch.full((2,), seq_len - 1))
            pair.finetuned.base_model(input_ids=ids, use_cache=False)
        assert rec.ptc_tokens is None and dec._pt_out is None
        return sum(t.numel() for block in rec._blocks for t in block)

    assert kept_elements(8) == kept_elements(64) == pair.num_layers * 2 * 2 * 64


@torch.no_grad()
def test_a_record_holds_exactly_one_forward_pass(tok):
    """A second forward in the same context (a decoding step, a retry) adds nothing to the record;
    recording another pass asks for a new record."""
    pair = make_pair("llama", tok)
    batch = _batch(pair)
    last = inputs.last_index(batch["attention_mask"])
    with pair.steer(1.0) as dec:
        once = dec.record(last)
        pair.finetuned(**batch)
    with pair.steer(1.0) as dec:
        rec = dec.record(last)
        pair.finetuned(**batch)
        assert dec.recording is None  # closed at the last block
        pair.finetuned(**batch)
        again = dec.record(last)
        pair.finetuned(**batch)
    assert len(rec._blocks) == len(again._blocks) == pair.num_layers
    assert torch.equal(rec.ftc_sum, once.ftc_sum) and torch.equal(again.ftc_sum, once.ftc_sum)
    assert torch.equal(rec.ptc_layers, once.ptc_layers)
