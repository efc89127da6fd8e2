"""ModelChain: stage components on the final model's stream, against an independent computation;
telescoping to the pair, per-stage alpha identities, stacked adapters, loading, errors."""

import copy
import json

import pytest
import torch
from conftest import PROMPTS, save_models

from tuco import IncompatiblePairError, ModelChain, ModelPair, cli, inputs
from tuco.blocks import find_blocks, hidden
from tuco.testing import perturbed_copy, tiny_model

ARCHS = ["llama", "gemma2", "gpt_neox", "mixtral"]


def three_models(arch: str):
    """M_0, M_1, M_2: two fine-tuning stages that change the blocks only."""
    m0 = tiny_model(arch)
    m1 = perturbed_copy(m0, scale=0.3, seed=1)
    return m0, m1, perturbed_copy(m1, scale=0.3, seed=2)


@torch.no_grad()
def independent_stage_sums(models, tok, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """(P [d], C [K, d]) at the last token of one prompt: every block of every model run by hand on
    the final model's block inputs, captured from its own forward pass."""
    final = models[-1]
    captured = []
    hooks = [
        block.register_forward_pre_hook(lambda m, a, k: captured.append((a, k)), with_kwargs=True)
        for block in find_blocks(final)
    ]
    ids = torch.tensor([inputs.encode(tok, [prompt])[0]])
    try:
        final(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    ptc = 0
    stages = 0
    for layer, (args, kwargs) in enumerate(captured):
        x = (args[0] if args else kwargs["hidden_states"])[0, -1].float()
        kwargs = {k: v for k, v in kwargs.items() if k != "past_key_values"}
        outs = [hidden(find_blocks(m)[layer](*args, **kwargs))[0, -1].float() for m in models]
        ptc = ptc + outs[0] - x
        stages = stages + torch.stack([hi - lo for lo, hi in zip(outs, outs[1:], strict=False)])
    return ptc, stages


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_shares_match_an_independent_computation(arch, tok):
    models = three_models(arch)
    chain = ModelChain(models, tok)
    pair = ModelPair(models[0], models[-1], tok)
    for fast in (True, False):
        got = chain.score(PROMPTS, fast=fast, batch_size=3)
        for prompt, r, rp in zip(PROMPTS, got, pair.score(PROMPTS, fast=fast), strict=True):
            ptc, stages = independent_stage_sums(models, tok, prompt)
            norms = stages.abs().sum(-1)
            shares = norms / (ptc.abs().sum() + norms.sum())
            assert r.stage_tuco == pytest.approx(shares.tolist(), abs=1e-5)
            assert r.stage_norms == pytest.approx(norms.tolist(), rel=1e-5)
            # the whole chain is the pair (M_0, M_K): telescoping
            assert r.tuco == pytest.approx(rp.tuco, abs=1e-5)
            assert r.ftc_layers == pytest.approx(rp.ftc_layers, rel=1e-5, abs=1e-6)
            assert len(r.stage_layers) == 2 and len(r.stage_layers[0]) == len(r.ftc_layers)


def test_stage_components_telescope_to_the_ftc(tok):
    chain = ModelChain(three_models("llama"), tok)
    batch = {k: v for k, v in inputs.pad(chain.encode(PROMPTS), 0, "right").items()}
    with chain.steer() as dec:
        rec = dec.record(inputs.last_index(batch["attention_mask"]), per_token=True)
        chain.body(**batch, use_cache=False)
    torch.testing.assert_close(rec.stage_sums().sum(0), rec.ftc_sum, rtol=1e-5, atol=1e-5)
    assert rec.stage_tokens is not None and rec.ftc_tokens is not None
    torch.testing.assert_close(rec.stage_tokens.sum(0), rec.ftc_tokens, rtol=1e-5, atol=1e-5)


def test_a_chain_of_one_stage_is_the_pair(tok):
    m0, m1, _ = three_models("llama")
    one, pair = ModelChain([m0, m1], tok), ModelPair(m0, m1, tok)
    for a, b in zip(one.score(PROMPTS, per_token=True), pair.score(PROMPTS, per_token=True), strict=True):
        assert a.tuco == pytest.approx(b.tuco, abs=1e-6) and a.stage_tuco == pytest.approx([b.tuco], abs=1e-6)
        assert a.stage_tuco_tokens == [pytest.approx(b.tuco_tokens, abs=1e-5)]
        assert a.stage_layers == [pytest.approx(a.ftc_layers, rel=1e-6)]


def test_per_token_shares_end_with_the_prompts_shares(tok):
    chain = ModelChain(three_models("llama"), tok)
    for r in chain.score(PROMPTS, per_token=True, padding_side="left"):
        assert [row[-1] for row in r.stage_tuco_tokens] == pytest.approx(r.stage_tuco, abs=1e-6)
        assert all(len(row) == r.n_tokens for row in r.stage_tuco_tokens)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_alpha_per_stage_identities(arch, tok):
    m0, m1, m2 = three_models(arch)
    chain = ModelChain([m0, m1, m2], tok)
    pair = ModelPair(m0, m2, tok)
    own = lambda model: ModelPair(m0, model, tok).logits(PROMPTS)  # noqa: E731 (the model's own forward)
    assert torch.equal(chain.logits(PROMPTS, alpha=[1, 1]), own(m2))  # exactly M_K
    torch.testing.assert_close(chain.logits(PROMPTS, alpha=[1, 0]), own(m1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chain.logits(PROMPTS, alpha=[0, 0]), pair.logits(PROMPTS, alpha=0.0))
    torch.testing.assert_close(chain.logits(PROMPTS, alpha=[0.6, 0.6]), pair.logits(PROMPTS, alpha=0.6))
    # stage 2 alone, scaled: differs from both neighbours
    mixed = chain.logits(PROMPTS, alpha=[1, 0.5])
    assert not torch.allclose(mixed, own(m1), atol=1e-4) and not torch.allclose(mixed, own(m2), atol=1e-4)


def test_cached_generation_per_stage_equals_uncached_steps(tok):
    m0, m1, m2 = three_models("llama")
    chain = ModelChain([m0, m1, m2], tok)
    alpha = [1.0, 0.5]
    texts = chain.generate(PROMPTS[:2], alpha=alpha, max_new_tokens=6, temperature=0)
    for prompt, text in zip(PROMPTS[:2], texts, strict=True):
        ids = chain.encode([prompt])[0]
        for _ in range(6):  # one uncached forward per step: no KV cache anywhere
            ids.append(int(chain.logits({"input_ids": [ids]}, alpha=alpha)[0, -1].argmax()))
        assert tok.decode(ids[len(chain.encode([prompt])[0]) :], skip_special_tokens=True) == text
    # tuco's own decoding loop (TuCo of every token) decodes the same at per-stage alphas
    monitored = chain.generate_with_tuco(PROMPTS[:2], alpha=alpha, max_new_tokens=6, temperature=0)
    assert [g.text for g in monitored] == texts
    # alpha = (1, 0) generates as M_1 does
    assert chain.generate(PROMPTS, alpha=[1, 0], max_new_tokens=5, temperature=0) == ModelPair(
        m0, m1, tok
    ).generate(PROMPTS, max_new_tokens=5, temperature=0)


# ---------------------------------------------------------------- stacked adapters
def _stacked(tok):
    """A PEFT model with two LoRA adapters stacked on one base, and M_0, M_1, M_2 merged."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model("llama")
    m0 = copy.deepcopy(base)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(base, config, adapter_name="sft").eval()
    torch.manual_seed(4)
    peft_model.add_adapter("style", config)
    merged = []
    for names in (["sft"], ["sft", "style"]):
        copy_ = copy.deepcopy(peft_model)
        copy_.base_model.set_adapter(names)
        merged.append(copy_.merge_and_unload(adapter_names=names).eval())
    return peft_model, [m0, *merged]


def test_stacked_adapters_equal_the_chain_of_merged_models(tok):
    peft_model, merged = _stacked(tok)
    adapters = ModelChain([peft_model], tok, adapters=["sft", "style"])
    full = ModelChain(merged, tok)
    for a, b in zip(adapters.score(PROMPTS), full.score(PROMPTS), strict=True):
        assert a.tuco == pytest.approx(b.tuco, abs=1e-5)
        assert a.stage_tuco == pytest.approx(b.stage_tuco, abs=1e-5)
    for alpha in ([1, 0], [1, 0.5], [0, 0]):
        torch.testing.assert_close(
            adapters.logits(PROMPTS, alpha), full.logits(PROMPTS, alpha), rtol=1e-4, atol=1e-4
        )
    # outside tuco the model runs with both adapters, as M_2
    torch.testing.assert_close(adapters.logits(PROMPTS), full.logits(PROMPTS), rtol=1e-4, atol=1e-4)


def test_from_pretrained_checkpoints_and_adapters(tmp_path, tok):
    peft_model, merged = _stacked(tok)
    dirs = []
    for k, model in enumerate(merged):
        model.save_pretrained(tmp_path / f"m{k}")
        tok.save_pretrained(tmp_path / f"m{k}")
        dirs.append(str(tmp_path / f"m{k}"))
    for name in ("sft", "style"):
        peft_model.save_pretrained(tmp_path / "adapters", selected_adapters=[name])
    loaded = ModelChain.from_pretrained(dirs, dtype="float32")
    stacked = ModelChain.from_pretrained(
        dirs[0], adapters=[str(tmp_path / "adapters" / n) for n in ("sft", "style")], dtype="float32"
    )
    reference = ModelChain(merged, tok).score(PROMPTS)
    assert loaded.identity == " -> ".join(dirs)
    assert stacked.identity == " -> ".join(
        [dirs[0], *(str(tmp_path / "adapters" / n) for n in ("sft", "style"))]
    )
    for chain in (loaded, stacked):
        assert chain.num_stages == 2
        for a, b in zip(chain.score(PROMPTS), reference, strict=True):
            assert a.stage_tuco == pytest.approx(b.stage_tuco, abs=1e-5)


# ---------------------------------------------------------------- errors
def test_errors_name_the_problem(tok):
    m0, m1, m2 = three_models("llama")
    chain = ModelChain([m0, m1, m2], tok)
    with pytest.raises(ValueError, match="one number for each of the 2 stage"):
        chain.logits(PROMPTS, alpha=[1, 0.5, 1])
    with pytest.raises(ValueError, match="does not split its stages"):
        chain.score(PROMPTS, components=True)
    with pytest.raises(ValueError, match="at least two models"):
        ModelChain([m0], tok)
    with pytest.raises(IncompatiblePairError, match="hidden_size"):
        ModelChain([m0, tiny_model("llama", hidden_size=32), m2], tok)
    peft_model, _ = _stacked(tok)
    with pytest.raises(ValueError, match="holds no adapter dpo; it holds sft, style"):
        ModelChain([peft_model], tok, adapters=["sft", "dpo"])
    with pytest.raises(ValueError, match="one number for each of the 1 stage"):
        ModelPair(m0, m1, tok).logits(PROMPTS, alpha=[1, 0])


# ---------------------------------------------------------------- command line and report
def _score(*args) -> int:
    return cli.main(["score", *map(str, args), "--dtype", "float32", "--quiet", "--no-chat-template"])


def test_score_chain_command_records_resume_and_report(tmp_path, tok):
    from tuco.report import write_report

    models = dict(zip(("base", "sft", "dpo"), three_models("llama"), strict=True))
    save_models(tmp_path, models)
    prompts = tmp_path / "p.jsonl"
    rows = [{"id": f"p{i}", "prompt": p, "group": "ab"[i % 2]} for i, p in enumerate(PROMPTS[:2] * 3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chain = [tmp_path / n for n in models]
    out = tmp_path / "r.jsonl"
    assert _score("--chain", *chain, "--prompts", prompts, "--out", out, "--batch-size", 2) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = ModelChain(list(models.values()), tok).score([r["prompt"] for r in rows])
    for record, result in zip(records, expected, strict=True):
        assert record["stage_tuco"] == pytest.approx(result.stage_tuco, abs=1e-5)
        assert record["tuco"] == pytest.approx(result.tuco, abs=1e-5)
        assert record["chain"] == [str(c) for c in chain] and len(record["stage_layers"]) == 2
    # resuming with another chain is refused; with the same one it adds nothing
    assert _score("--chain", *chain[::2], "--prompts", prompts, "--out", out, "--resume") != 0
    assert _score("--chain", *chain, "--prompts", prompts, "--out", out, "--resume") == 0
    assert len(out.read_text().splitlines()) == len(rows)
    md = write_report([str(out)], str(tmp_path / "r.md"), group_by="group", fmt="md").read_text()
    assert "Training stages: each stage's share" in md and "1: sft" in md and "2: dpo" in md
    page = write_report([str(out)], str(tmp_path / "r.html"), group_by="group").read_text()
    assert "Training stages" in page and "chain" in page


def test_score_chain_adapters_command(tmp_path, tok):
    peft_model, merged = _stacked(tok)
    save_models(tmp_path, {"m0": merged[0]})
    for name in ("sft", "style"):
        peft_model.save_pretrained(tmp_path / "adapters", selected_adapters=[name])
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    adapters = [tmp_path / "adapters" / n for n in ("sft", "style")]
    out = tmp_path / "r.jsonl"
    assert (
        _score("--chain", tmp_path / "m0", "--chain-adapters", *adapters, "--prompts", prompts, "--out", out)
        == 0
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = ModelChain(merged, tok).score(PROMPTS[:2])
    for record, result in zip(records, expected, strict=True):
        assert record["stage_tuco"] == pytest.approx(result.stage_tuco, abs=1e-5)
        assert record["chain_adapters"] == [str(a) for a in adapters]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--chain", "B"], "give two or more checkpoints"),
        (["--chain", "B", "C", "--chain-adapters", "A"], "stack on one base"),
        (["--chain-adapters", "A"], "--chain-adapters needs --chain BASE"),
        (["--chain", "B", "C", "--pair", "demo"], "give --chain or --pair, not both"),
        (["--chain", "B", "C", "--components"], "--components/--heads split a pair's blocks"),
    ],
)
def test_score_chain_command_errors(tmp_path, capsys, extra, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    assert _score(*extra, "--prompts", prompts, "--out", tmp_path / "r.jsonl") != 0
    assert message in capsys.readouterr().err
