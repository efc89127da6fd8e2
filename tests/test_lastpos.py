"""The last-token fast path equals the general path on every family, and falls back where it must."""

import logging

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import ModelPair, inputs
from tuco.decompose import Decomposition
from tuco.testing import ARCHITECTURES, MORE_ARCHITECTURES, perturbed_copy, tiny_model

UNEVEN = PROMPTS + ["A much longer prompt that runs well past the sliding window of the tiny models here."]


def assert_same(fast, general, tol=1e-5):
    for a, b in zip(fast, general, strict=True):
        assert a.tuco == pytest.approx(b.tuco, abs=tol)
        assert (a.ptc_norm, a.ftc_norm, a.n_tokens) == pytest.approx(
            (b.ptc_norm, b.ftc_norm, b.n_tokens), rel=tol
        )
        for name in ("ptc_layers", "ftc_layers", "beta"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=tol, abs=tol)


@pytest.mark.parametrize("arch", ARCHITECTURES + MORE_ARCHITECTURES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_fast_path_equals_the_general_path(arch, side, tok):
    pair = make_pair(arch, tok) if arch in ARCHITECTURES else _pair(arch, tok)
    general = pair.score(UNEVEN, fast=False, padding_side=side, batch_size=3)
    assert_same(pair.score(UNEVEN, batch_size=3), general)
    assert_same(pair.score(UNEVEN, batch_size=1), general)


def _pair(arch, tok):
    pt = tiny_model(arch)
    return ModelPair(pt, perturbed_copy(pt, scale=0.3), tok)


def test_fast_path_in_adapter_mode(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    pair = ModelPair(finetuned=model.eval(), tokenizer=tok)
    assert_same(pair.score(UNEVEN, batch_size=3), pair.score(UNEVEN, batch_size=3, fast=False))


def test_only_blocks_without_attention_fall_back_and_say_so(tok, caplog):
    pair = _pair("lfm2", tok)  # conv, attention, conv
    with caplog.at_level(logging.INFO, logger="tuco"):
        pair.score(["Hello there, a prompt long enough."])
    fallbacks = [r.getMessage() for r in caplog.records if "runs on every position" in r.getMessage()]
    assert any("block 0 " in m and "Lfm2ShortConv" in m for m in fallbacks)
    assert any("block 2 " in m for m in fallbacks)
    assert not any("block 1 " in m for m in fallbacks)  # the attention block takes the fast path


def mlp_positions(pair, **kwargs) -> list[int]:
    """How many positions the MLP of PT block 1 sees in one score call."""
    seen = []
    handle = pair.pt_blocks[1].mlp.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    try:
        pair.score(UNEVEN[:2], batch_size=2, **kwargs)
    finally:
        handle.remove()
    return seen


def test_the_pt_blocks_run_at_one_position_only_where_they_may(tok):
    pair = make_pair("llama", tok)
    longest = max(map(len, pair.encode(UNEVEN[:2])))
    assert mlp_positions(pair) == [1]  # keys/values captured, then the block at the last token
    assert mlp_positions(pair, fast=False) == [longest]
    assert mlp_positions(pair, alpha=0.5) == [longest]  # the PT blocks feed the stream
    assert mlp_positions(pair, per_token=True) == [longest]  # every position is read
    with pytest.raises(ValueError, match="needs alpha = 1"):
        Decomposition(pair.ft_blocks, pair.pt_blocks, alpha=0.5, last_only=True)
    with (
        pair.steer(1.0, last_only=True) as dec,
        pytest.raises(ValueError, match="per_token=True needs every"),
    ):
        dec.record(torch.tensor([0]), per_token=True)
    assert_same(pair.score(UNEVEN, per_token=True), pair.score(UNEVEN))


def test_fast_path_leaves_the_ft_forward_and_attention_settings_untouched(tok):
    pair = make_pair("gemma3_text", tok)
    before = pair.pretrained.config._attn_implementation
    batch = inputs.pad(pair.encode(UNEVEN), 0, "left")
    with torch.no_grad():
        plain = pair.finetuned(**batch).logits
        with pair.steer(1.0, last_only=True) as dec:
            dec.record(inputs.last_index(batch["attention_mask"]))
            hooked = pair.finetuned(**batch).logits
    assert torch.equal(plain, hooked)
    assert pair.pretrained.config._attn_implementation == before
    assert all("forward" not in m.__dict__ for m in pair.pretrained.modules())  # q_proj restored


def test_attention_outside_the_interface_falls_back_to_the_full_block(tok, caplog):
    pair = _pair("llama", tok)
    general = pair.score(UNEVEN, fast=False)
    for block in pair.pt_blocks:  # attention that ignores the config's implementation (as custom code may)
        attn, forward = block.self_attn, block.self_attn.forward

        def direct(*args, attn=attn, forward=forward, **kwargs):
            saved, attn.config._attn_implementation_internal = (
                attn.config._attn_implementation_internal,
                "sdpa",
            )
            try:
                return forward(*args, **kwargs)
            finally:
                attn.config._attn_implementation_internal = saved

        attn.forward = direct
    with caplog.at_level(logging.INFO, logger="tuco"):
        assert_same(pair.score(UNEVEN), general)  # not the capture run's output (its queries were zeros)
    assert "calls no attention through transformers' AttentionInterface" in caplog.text


@pytest.mark.parametrize("arch, full_width", [("llama", False), ("gemma3_text", False), ("olmo2", True)])
def test_the_capture_run_leaves_queries_out_where_the_block_code_allows(arch, full_width, tok):
    """[b, s, 0] queries (no rotary work over s positions) unless the block normalises the whole
    query projection (OLMo-2's q_norm), which then gets zeros: exact either way."""
    from tuco import lastpos

    pair = _pair(arch, tok)  # fresh blocks: none remembered from an earlier test
    widths = []
    real = lastpos._zeros

    def spy(x, *args, out_features, **kwargs):
        widths.append(out_features)
        return real(x, *args, out_features=out_features, **kwargs)

    lastpos._zeros = spy
    try:
        assert_same(pair.score(UNEVEN, batch_size=3), pair.score(UNEVEN, fast=False, batch_size=3))
    finally:
        lastpos._zeros = real
    assert all(b in lastpos._full_queries for b in pair.pt_blocks) == full_width
    assert (0 in widths) and (any(w > 0 for w in widths) == full_width)


def _last_token_sums(pair, later: bool, inside: bool = False):
    batch = pair.body_inputs(inputs.pad(pair.encode(UNEVEN), pair.pad_id, "left"))
    last = torch.full((len(UNEVEN),), batch["input_ids"].shape[1] - 1)
    with torch.inference_mode(), pair.steer(1.0, last_only=True, later=later) as dec:  # noqa: SIM117
        rec = dec.record(last, layers=False)
        logits = pair.finetuned(**batch).logits
        if later and inside:
            dec.run_later()
    if later and not inside:
        with torch.inference_mode():
            dec.run_later()
    return logits, rec.sums()


@pytest.mark.parametrize("mode", ["pair", "adapter", "merged"])
def test_pt_blocks_run_later_give_the_same_record(mode, tok):
    if mode == "pair":
        pair = make_pair("gemma3_text", tok)
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        for p in model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)
        pair = ModelPair(finetuned=model.eval(), tokenizer=tok)
        if mode == "merged":
            assert pair.merge_adapter() is None
    logits, (ptc, ftc) = _last_token_sums(pair, later=False)
    for inside in (False, True):
        later_logits, (later_ptc, later_ftc) = _last_token_sums(pair, later=True, inside=inside)
        assert torch.equal(later_logits, logits)  # the pass itself is the FT forward
        torch.testing.assert_close(later_ptc, ptc, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(later_ftc, ftc, atol=1e-6, rtol=1e-6)
    assert not torch.equal(ftc, torch.zeros_like(ftc))
    with pytest.raises(ValueError, match="last_only"):
        pair.steer(1.0, later=True)
