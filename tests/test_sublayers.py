"""Attention vs MLP, and per head: the split against an independent computation, on every family."""

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import ModelPair, inputs
from tuco.blocks import find_blocks, hidden
from tuco.errors import check_alpha
from tuco.sublayers import SublayerError
from tuco.testing import ARCHITECTURES, MORE_ARCHITECTURES, perturbed_copy, tiny_model

UNEVEN = PROMPTS + ["A much longer prompt that runs well past the sliding window of the tiny models here."]

# Independent of tuco.sublayers' discovery: each family's sublayer outputs, by name, read from its
# modeling code (what the block adds to its residual stream). lfm2's conv blocks: ``conv``.
SIDES = {
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "olmo2": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "gpt2": ("attn", "mlp"),
    "gpt_neox": ("attention", "mlp"),
    "opt": ("self_attn", "fc2"),
    "lfm2": ("self_attn", "feed_forward"),
}


def _batch(pair, prompts, side="right"):
    return inputs.pad(pair.encode(prompts), pair.pad_id, side)


def _pair(arch, tok):
    if arch in ARCHITECTURES:
        return make_pair(arch, tok)
    pt = tiny_model(arch)
    return ModelPair(pt, perturbed_copy(pt, scale=0.3), tok)


def block_inputs(pair, batch) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of every FT block in a plain FT forward of ``batch``."""
    calls = []
    blocks = find_blocks(pair.finetuned)
    handles = [
        b.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)), with_kwargs=True) for b in blocks
    ]
    try:
        pair.finetuned(**batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return calls


@torch.no_grad()
def independent(pair, prompts, arch):
    """Per prompt, at its last token: the norms of each block's PTC/FTC attention and MLP sides,
    from both blocks run by hand on the FT stream's block inputs (right padding)."""
    batch = _batch(pair, prompts)
    last = batch["attention_mask"].sum(1) - 1
    rows = torch.arange(len(prompts))
    blocks_ft, blocks_pt = find_blocks(pair.finetuned), find_blocks(pair.pretrained)
    calls = block_inputs(pair, batch)
    layers = {k: [] for k in ("ptc_attn", "ftc_attn", "ptc_mlp", "ftc_mlp")}
    for layer, (args, kwargs) in enumerate(calls):
        sides = []
        for block in (blocks_pt[layer], blocks_ft[layer]):
            attn_name, mlp_name = SIDES.get(arch, ("self_attn", "mlp"))
            if not hasattr(block, attn_name):
                attn_name = "conv"  # lfm2's conv blocks
            kept = {}
            hooks = [
                getattr(block, n).register_forward_hook(
                    lambda m, a, o, n=n, kept=kept: kept.__setitem__(n, hidden(o))
                )
                for n in (attn_name, mlp_name)
            ]
            block(*args, **kwargs)
            for h in hooks:
                h.remove()
            x = args[0]
            a, m = (kept[n].reshape(x.shape)[rows, last].float() for n in (attn_name, mlp_name))
            sides.append((a, m))
        (pt_a, pt_m), (ft_a, ft_m) = sides
        for name, t in (
            ("ptc_attn", pt_a),
            ("ftc_attn", ft_a - pt_a),
            ("ptc_mlp", pt_m),
            ("ftc_mlp", ft_m - pt_m),
        ):
            layers[name].append(t.abs().sum(-1))
    return {k: torch.stack(v, dim=1) for k, v in layers.items()}  # [batch, L]


@pytest.mark.parametrize("arch", ARCHITECTURES + MORE_ARCHITECTURES)
def test_the_split_matches_an_independent_computation_on_every_family(arch, tok):
    pair = _pair(arch, tok)
    expected = independent(pair, UNEVEN, arch)
    plain = pair.score(UNEVEN, batch_size=3)
    for fast, side in ((True, "left"), (False, "left"), (False, "right")):
        results = pair.score(UNEVEN, batch_size=3, components=True, fast=fast, padding_side=side)
        for i, r in enumerate(results):
            for name, values in expected.items():
                assert getattr(r, f"{name}_layers") == pytest.approx(values[i].tolist(), rel=1e-4, abs=1e-5)
            assert r.sum_check <= 1e-5
            assert r.tuco == pytest.approx(plain[i].tuco, abs=1e-6)  # components change nothing else
            assert 0 < r.tuco_attn < 1 and 0 < r.tuco_mlp < 1


@torch.no_grad()
def test_tuco_of_each_side_is_the_formula_on_that_sides_sums(tok):
    pair = make_pair("llama", tok)
    with pair.steer(1.0, components=True) as dec:
        batch = _batch(pair, PROMPTS, "left")
        rec = dec.record(torch.full((len(PROMPTS),), batch["input_ids"].shape[1] - 1))
        pair.finetuned(**batch, use_cache=False)
    sums = rec.sublayer_sums()
    # the two sides' sums add up to the block sums: P = P_attn + P_mlp, F = F_attn + F_mlp
    ptc, ftc = rec.sums()
    assert torch.allclose(sums["ptc_attn"] + sums["ptc_mlp"], ptc, atol=1e-5)
    assert torch.allclose(sums["ftc_attn"] + sums["ftc_mlp"], ftc, atol=1e-5)
    results = pair.score(PROMPTS, components=True)
    f, p = sums["ftc_attn"].abs().sum(-1), sums["ptc_attn"].abs().sum(-1)
    assert [r.tuco_attn for r in results] == pytest.approx((f / (f + p)).tolist(), abs=1e-6)


def test_per_token_sides(tok):
    pair = make_pair("qwen3", tok)
    results = pair.score(UNEVEN, components=True, per_token=True, batch_size=3)
    for r in results:
        assert len(r.tuco_attn_tokens) == len(r.tuco_mlp_tokens) == r.n_tokens
        assert r.tuco_attn_tokens[-1] == pytest.approx(r.tuco_attn, abs=1e-6)
        assert r.tuco_mlp_tokens[-1] == pytest.approx(r.tuco_mlp, abs=1e-6)


def test_adapter_mode_fast_and_general_paths_agree(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "o_proj", "v_proj", "down_proj"])
    )
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    pair = ModelPair(finetuned=model.eval(), tokenizer=tok)
    fast = pair.score(UNEVEN, batch_size=3, heads=True)
    general = pair.score(UNEVEN, batch_size=3, heads=True, fast=False)
    for a, b in zip(fast, general, strict=True):
        assert a.sum_check <= 1e-5 and b.sum_check <= 1e-5
        for name in ("ftc_attn_layers", "ftc_mlp_layers", "ptc_attn_layers", "ftc_head_bias"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-4, abs=1e-6)
        assert torch.allclose(torch.tensor(a.ftc_heads), torch.tensor(b.ftc_heads), rtol=1e-4, atol=1e-6)
        assert max(max(h) for h in a.ftc_heads) > 0  # LoRA on o_proj and v_proj moves the heads


@torch.no_grad()
def test_heads_match_the_output_projection_sliced_by_hand(tok):
    pair = make_pair("llama", tok)
    results = pair.score(PROMPTS[:2], heads=True, batch_size=2, fast=False, padding_side="right")
    batch = _batch(pair, PROMPTS[:2])
    last = batch["attention_mask"].sum(1) - 1
    kept = {}
    heads = pair.finetuned.config.num_attention_heads
    o_projs = {
        side: find_blocks(m)[1].self_attn.o_proj
        for side, m in (("pt", pair.pretrained), ("ft", pair.finetuned))
    }
    block_inputs = []
    hook = find_blocks(pair.finetuned)[1].register_forward_pre_hook(
        lambda m, a, k: block_inputs.append((a, k)), with_kwargs=True
    )
    pair.finetuned(**batch, use_cache=False)
    hook.remove()
    args, kwargs = block_inputs[0]
    for side, o_proj in o_projs.items():
        h = o_proj.register_forward_hook(lambda m, a, o, side=side: kept.__setitem__(side, a[0]))
        (find_blocks(pair.pretrained if side == "pt" else pair.finetuned)[1])(*args, **kwargs)
        h.remove()
    per_head = {}
    for side, o_proj in o_projs.items():
        z = kept[side][torch.arange(2), last]  # [b, H*hd]
        w = o_proj.weight.view(o_proj.out_features, heads, -1)  # [d, H, hd]
        per_head[side] = torch.einsum("bhk,dhk->bhd", z.view(2, heads, -1), w)
    ftc = (per_head["ft"] - per_head["pt"]).abs().sum(-1)
    ptc = per_head["pt"].abs().sum(-1)
    for i, r in enumerate(results):
        assert r.ftc_heads[1] == pytest.approx(ftc[i].tolist(), rel=1e-4)
        assert r.ptc_heads[1] == pytest.approx(ptc[i].tolist(), rel=1e-4)
        assert r.ptc_head_bias == [0.0] * pair.num_layers  # Llama's o_proj has no bias


@pytest.mark.parametrize("arch, says", [("gemma3_text", "a norm follows"), ("lfm2", "Lfm2ShortConv")])
def test_heads_refuse_where_the_split_is_not_exact(arch, says, tok):
    pair = _pair(arch, tok)
    with pytest.raises(SublayerError, match=says):
        pair.score(PROMPTS, heads=True)
    assert pair.score(PROMPTS, components=True)[0].sum_check <= 1e-5  # the sides still split


def test_a_block_that_is_not_input_plus_two_sublayers_is_refused(tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "granite",
        vocab_size=272,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        residual_multiplier=0.5,
    )
    torch.manual_seed(0)
    pt = AutoModelForCausalLM.from_config(config).eval()
    pair = ModelPair(pt, perturbed_copy(pt, scale=0.3), tok)
    with pytest.raises(SublayerError, match="residual multiplier"):
        pair.score(PROMPTS, components=True)


# ---------------------------------------------------------------------- alpha per sublayer
@torch.no_grad()
def manual_logits(pair, batch, attn_alpha, mlp_alpha, arch):
    """x + PTC + a FTC^attn + b FTC^mlp block by block, by hand, with the table's sublayer names."""
    ft, pt = find_blocks(pair.finetuned), find_blocks(pair.pretrained)
    calls = block_inputs(pair, batch)
    names = SIDES.get(arch, ("self_attn", "mlp"))
    x = calls[0][0][0] if calls[0][0] else calls[0][1]["hidden_states"]
    for layer, (args, kwargs) in enumerate(calls):
        kwargs = dict(kwargs)
        kwargs.pop("hidden_states", None)
        sides = []
        for block in (pt[layer], ft[layer]):
            kept = {}
            hooks = [
                getattr(block, n).register_forward_hook(
                    lambda m, a, o, n=n, kept=kept: kept.__setitem__(n, hidden(o))
                )
                for n in names
            ]
            block(x, *args[1:], **kwargs)
            for h in hooks:
                h.remove()
            sides.append([kept[n].float() for n in names])
        (pt_a, pt_m), (ft_a, ft_m) = sides
        x = (x.float() + pt_a + pt_m + attn_alpha * (ft_a - pt_a) + mlp_alpha * (ft_m - pt_m)).to(x.dtype)
    hook = pair.finetuned.model.norm.register_forward_pre_hook(lambda m, a: (x,))  # the final norm
    try:
        return pair.finetuned(**batch, use_cache=False).logits.float()
    finally:
        hook.remove()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_alpha_per_sublayer_against_a_block_by_block_computation(arch, tok):
    pair = make_pair(arch, tok)
    batch = _batch(pair, PROMPTS)
    alpha = {"attn": 0.5, "mlp": 1.5}
    got = pair.logits(PROMPTS, alpha=alpha, padding_side="right")
    want = manual_logits(pair, batch, 0.5, 1.5, arch)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-4)
    assert not torch.allclose(
        got[mask], pair.logits(PROMPTS, alpha=1.0, padding_side="right")[mask], atol=1e-2
    )


def test_alpha_per_sublayer_identities(tok):
    pair = make_pair("qwen3", tok)
    plain = pair.logits(PROMPTS)
    assert check_alpha({"attn": 1, "mlp": 1}) == 1.0 and check_alpha({"mlp": 1}) == 1.0
    assert torch.equal(pair.logits(PROMPTS, alpha={"attn": 1.0, "mlp": 1.0}), plain)  # the FT model exactly
    for a in (0.0, 0.7, 1.3):
        split = pair.logits(PROMPTS, alpha={"attn": a, "mlp": a})
        assert torch.allclose(split, pair.logits(PROMPTS, alpha=a), atol=1e-4)
    scored = pair.score(PROMPTS, alpha={"attn": 0.0})  # a missing kind is 1
    assert [r.tuco for r in scored] == pytest.approx(
        [r.tuco for r in pair.score(PROMPTS, alpha={"attn": 0.0, "mlp": 1.0})]
    )
    texts = pair.generate(PROMPTS[:2], alpha={"attn": 0.5, "mlp": 1.0}, max_new_tokens=4)
    assert len(texts) == 2


def test_alpha_per_sublayer_errors():
    with pytest.raises(ValueError, match="keys attn and mlp, not ffn"):
        check_alpha({"ffn": 0.5})
    with pytest.raises(ValueError, match=r"alpha\['mlp'\] must be a finite number"):
        check_alpha({"mlp": float("nan")})
