"""ModelPair: batching and padding invariance, generation with caches, PEFT mode, loading."""

import copy
import logging

import pytest
import torch
from conftest import PROMPTS, make_pair

from tuco import ModelPair, inputs
from tuco.testing import ARCHITECTURES, tiny_model

FIELDS_LIST = ("ptc_layers", "ftc_layers", "beta")
FIELDS_FLOAT = ("tuco", "ptc_norm", "ftc_norm")


def assert_results_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.n_tokens == rb.n_tokens
        for f in FIELDS_FLOAT:
            assert getattr(ra, f) == pytest.approx(getattr(rb, f), rel=tol, abs=tol), f
        for f in FIELDS_LIST:
            assert getattr(ra, f) == pytest.approx(getattr(rb, f), rel=tol, abs=tol), f


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_size_and_padding_side_do_not_change_results(arch, tok):
    pair = make_pair(arch, tok)
    reference = pair.score(PROMPTS, batch_size=1, per_token=True)
    for batch_size, side in [(4, "right"), (4, "left"), (3, "left")]:
        got = pair.score(PROMPTS, batch_size=batch_size, padding_side=side, per_token=True)
        assert_results_close(got, reference)
        for ra, rb in zip(got, reference, strict=True):
            assert ra.tuco_tokens == pytest.approx(rb.tuco_tokens, rel=1e-5, abs=1e-5)
    l2_reference = pair.score(PROMPTS, batch_size=1, norm="l2")
    assert_results_close(pair.score(PROMPTS, batch_size=4, padding_side="left", norm="l2"), l2_reference)


def test_results_are_in_input_order_and_complete(tok):
    pair = make_pair("llama", tok)
    results = pair.score(PROMPTS, batch_size=2)
    singles = [pair.score([p])[0] for p in PROMPTS]
    assert_results_close(results, singles)
    assert [r.n_tokens for r in results] == [len(ids) for ids in pair.encode(PROMPTS)]


def test_length_sorted_batches_save_padding(tok):
    pair = make_pair("llama", tok)
    prompts = ["a" * 40, "b", "c" * 38, "d" * 2, "e" * 39, "f"]
    assert_results_close(pair.score(prompts, batch_size=2), pair.score(prompts, batch_size=1))
    pair.score(prompts, batch_size=2)
    lengths = [len(ids) for ids in pair.encode(prompts)]
    assert pair.padding["tokens"] == sum(lengths)
    assert pair.padding["input_order"] == 2 * (41 + 39 + 40)  # pairs in input order pad to the long one
    assert pair.padding["sorted"] == 2 * (41 + 39 + 2)  # (41, 40), (39, 3), (2, 2)


def test_per_token_tuco_ends_with_the_prompt_tuco(tok):
    pair = make_pair("llama", tok)
    for r in pair.score(PROMPTS, per_token=True):
        assert len(r.tuco_tokens) == r.n_tokens
        assert r.tuco_tokens[-1] == pytest.approx(r.tuco, abs=1e-6)
        assert all(0 <= t <= 1 for t in r.tuco_tokens)
    assert pair.score(PROMPTS)[0].tuco_tokens is None


def test_batch_encoding_input_gives_the_same_result(tok):
    pair = make_pair("llama", tok)
    texts = [p for p in PROMPTS if isinstance(p, str)]
    for side in ("left", "right"):
        tok.padding_side = side
        enc = tok(texts, padding=True, return_tensors="pt")
        assert_results_close(pair.score(enc), pair.score(texts))
    tok.padding_side = "right"


def test_l2_variant_uses_l2_norms_throughout(tok):
    pair = make_pair("llama", tok)
    batch = inputs.pad(pair.encode(PROMPTS), 0, "right")
    with torch.no_grad(), pair.steer(1.0) as dec:
        rec = dec.record(inputs.last_index(batch["attention_mask"]))
        pair.finetuned.base_model(**batch)
    for r, p_sum, f_sum in zip(pair.score(PROMPTS, norm="l2"), rec.ptc_sum, rec.ftc_sum, strict=True):
        assert r.norm == "l2"
        assert r.ptc_norm == pytest.approx(p_sum.norm().item(), rel=1e-5)
        assert r.tuco == pytest.approx(f_sum.norm().item() / (p_sum.norm() + f_sum.norm()).item(), rel=1e-5)
        assert r.beta[-1] == pytest.approx(r.tuco, abs=1e-6)
    with pytest.raises(ValueError, match="norm must be"):
        pair.score(PROMPTS, norm="l3")


def test_to_dict_round_trip(tok):
    from tuco import TucoResult

    r = make_pair("llama", tok).score(PROMPTS[:1])[0]
    assert TucoResult(**r.to_dict()) == r
    assert r.preco == pytest.approx(1 - r.tuco)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_next_token_probs_match_the_alpha_logits(alpha, tok):
    pair = make_pair("llama", tok)
    logits = pair.logits(PROMPTS, alpha=alpha, padding_side="right")
    last = inputs.last_index(inputs.pad(pair.encode(PROMPTS), 0, "right")["attention_mask"])
    expected = torch.softmax(logits[torch.arange(len(PROMPTS)), last], -1)
    probs = pair.next_token_probs(PROMPTS, alpha=alpha, batch_size=3)
    assert probs.shape == expected.shape and (probs - expected).abs().max() < 1e-5
    subset = pair.next_token_probs(PROMPTS, alpha=alpha, token_ids=[5, 7])
    assert torch.allclose(subset, probs[:, [5, 7]], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "opt"])
def test_generation_with_pt_cache_equals_cache_free_generation(arch, tok):
    pair = make_pair(arch, tok)
    kw = dict(max_new_tokens=12, do_sample=False)
    cached = pair.generate(PROMPTS, alpha=0.5, **kw)
    uncached = pair.generate(PROMPTS, alpha=0.5, use_cache=False, **kw)
    assert cached == uncached
    assert cached != pair.generate(PROMPTS, alpha=1.0, **kw)  # alpha changes the text


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "opt"])
def test_generation_at_alpha_one_is_the_ft_models_own(arch, tok):
    pair = make_pair(arch, tok)
    kw = dict(max_new_tokens=12, do_sample=False)
    batch = inputs.pad(pair.encode(PROMPTS), 0, "left")
    batch.pop("position_ids")
    with torch.no_grad():
        own = pair.finetuned.generate(**batch, pad_token_id=0, **kw)[:, batch["input_ids"].shape[1] :]
    own_text = tok.batch_decode(own, skip_special_tokens=True)
    assert pair.generate(PROMPTS, alpha=1.0, **kw) == own_text
    with pair.steer(1.0):  # through the hooks, PT cache included
        assert pair.generate(PROMPTS, alpha=1.0, **kw) == own_text


def test_a_prefilled_cache_is_refused(tok):
    from transformers import DynamicCache

    pair = make_pair("llama", tok)
    batch = inputs.pad(pair.encode(PROMPTS[:1]), 0, "left")
    cache = DynamicCache(config=pair.finetuned.config)
    with torch.no_grad():
        pair.finetuned(**batch, cache=cache, use_cache=True)
        with pair.steer(0.5), pytest.raises(RuntimeError, match="already holds tokens"):
            pair.finetuned(input_ids=batch["input_ids"][:, -1:], cache=cache, use_cache=True)


def test_output_contribution(tok):
    pair = make_pair("llama", tok)
    oc = pair.output_contribution(PROMPTS)
    assert all(0 < o.outputco < 1 and o.kl > 0 for o in oc)
    # batch size and order do not matter
    single = [pair.output_contribution([p])[0] for p in PROMPTS]
    for a, b in zip(oc, single, strict=True):
        assert a.outputco == pytest.approx(b.outputco, rel=1e-5) and a.kl == pytest.approx(b.kl, rel=1e-3)
    pt = tiny_model("llama")
    same = ModelPair(pt, copy.deepcopy(pt), tok).output_contribution(PROMPTS)
    assert all(o.outputco == 0 and abs(o.kl) < 1e-7 and o.distance == 0 for o in same)
    assert all(o.distance > 0 for o in oc)


# ---------------------------------------------------------------- PEFT mode
def _peft_pair_and_merged(tok, arch="llama"):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(arch)
    reference_base = copy.deepcopy(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(3)
    peft_model = get_peft_model(base, config).eval()
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    return peft_model, ModelPair(finetuned=peft_model, tokenizer=tok), ModelPair(reference_base, merged, tok)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_adapter_mode_equals_merged_model_paired_with_base(arch, tok):
    peft_model, adapter_pair, merged_pair = _peft_pair_and_merged(tok, arch)
    assert adapter_pair.adapter_mode and not merged_pair.adapter_mode
    assert_results_close(adapter_pair.score(PROMPTS), merged_pair.score(PROMPTS), tol=1e-4)
    assert adapter_pair.score(PROMPTS)[0].tuco > 0
    for alpha in (0.0, 0.5, 1.0, 1.5):
        a = adapter_pair.logits(PROMPTS, alpha=alpha)
        b = merged_pair.logits(PROMPTS, alpha=alpha)
        assert (a - b).abs().max() <= 1e-4, alpha
    oc_a, oc_b = adapter_pair.output_contribution(PROMPTS), merged_pair.output_contribution(PROMPTS)
    for a, b in zip(oc_a, oc_b, strict=True):
        assert a.outputco == pytest.approx(b.outputco, rel=1e-4)
    kw = dict(max_new_tokens=8, do_sample=False)
    assert adapter_pair.generate(PROMPTS, alpha=0.5, **kw) == adapter_pair.generate(
        PROMPTS, alpha=0.5, use_cache=False, **kw
    )
    # the adapters are left switched on, with their requires_grad untouched
    lora = [m for m in peft_model.modules() if hasattr(m, "_disable_adapters") and hasattr(m, "base_layer")]
    assert lora and not any(m._disable_adapters for m in lora)


def test_adapter_mode_needs_a_peft_model(tok):
    with pytest.raises(ValueError, match="must be a PEFT model"):
        ModelPair(finetuned=tiny_model("llama"), tokenizer=tok)
    with pytest.raises(ValueError, match="needs finetuned="):
        ModelPair(pretrained=tiny_model("llama"), tokenizer=tok)


# ---------------------------------------------------------------- loading from directories
def test_from_pretrained_local_dirs_and_adapter(tmp_path, tok, caplog, recwarn):
    pair = make_pair("llama", tok)
    for name, model in (("pt", pair.pretrained), ("ft", pair.finetuned)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    loaded = ModelPair.from_pretrained(
        str(tmp_path / "pt"), str(tmp_path / "ft"), dtype="float32", device_map="cpu"
    )
    assert_results_close(loaded.score(PROMPTS), pair.score(PROMPTS))
    assert set(next(b.parameters()).device.type for b in loaded.pt_blocks) == {"cpu"}

    peft_model, adapter_pair, _ = _peft_pair_and_merged(tok)
    peft_model.save_pretrained(tmp_path / "adapter")
    base_dir = tmp_path / "base"
    tiny_model("llama").save_pretrained(base_dir)  # the same seed: the adapter's base weights
    tok.save_pretrained(base_dir)
    recwarn.clear()
    with caplog.at_level(logging.INFO, logger="tuco"):
        from_dirs = ModelPair.from_pretrained(str(base_dir), adapter=str(tmp_path / "adapter"))
    assert from_dirs.adapter_mode
    # the identity caches are keyed by (tuco.experiments.gcg) names the adapter too
    assert from_dirs.identity == f"{base_dir} + adapter {tmp_path / 'adapter'}"
    assert loaded.identity == str(tmp_path / "ft")
    # an adapter without tokenizer files is the usual case: said plainly, no warning of any kind
    assert "tokenizer: the base model's" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [str(w.message) for w in recwarn if issubclass(w.category, (FutureWarning, UserWarning))]
    assert_results_close(from_dirs.score(PROMPTS), adapter_pair.score(PROMPTS), tol=1e-4)


def test_bf16_accumulates_in_float32(tok):
    pair = make_pair("llama", tok)
    pt16 = copy.deepcopy(pair.pretrained).to(torch.bfloat16)
    ft16 = copy.deepcopy(pair.finetuned).to(torch.bfloat16)
    pair16 = ModelPair(pt16, ft16, tok)
    with pair16.steer(1.0) as dec:
        batch = inputs.pad(pair16.encode(PROMPTS), 0, "right")
        rec = dec.record(inputs.last_index(batch["attention_mask"]), per_token=True)
        with torch.no_grad():
            pair16.finetuned.base_model(**batch)
    assert rec.ptc_sum.dtype == rec.ptc_tokens.dtype == torch.float32
    r16, r32 = pair16.score(PROMPTS), pair.score(PROMPTS)
    for a, b in zip(r16, r32, strict=True):
        assert a.tuco == pytest.approx(b.tuco, abs=0.02)
    assert pair16.logits(PROMPTS, alpha=0.5).dtype == torch.float32


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="Could not load the pretrained model"):
        ModelPair.from_pretrained(str(tmp_path / "nope"), str(tmp_path / "nope2"))
    with pytest.raises(ValueError, match="exactly one of finetuned="):
        ModelPair.from_pretrained("a")
