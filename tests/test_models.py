"""Which models a command runs on (tuco.models): the stable identity that caches keyed by model use."""

import json

from tuco.models import Models, identity


def test_a_demo_pairs_identity_is_its_name_and_recipe_not_its_local_folders(tmp_path):
    adapter = tmp_path / "machine-specific" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "metrics.json").write_text(json.dumps({"recipe": "2411ca63f0c4"}))
    demo = Models("demo-safety", str(tmp_path / "base"), None, str(adapter), "llama")
    assert identity(demo) == "demo-safety@2411ca63f0c4"
    moved = Models("demo-safety", "/elsewhere/base", None, "/elsewhere/adapter", "llama")
    assert identity(moved) == "demo-safety@unknown recipe"  # no metrics: still no local path in it


def test_other_models_are_named_as_given():
    assert identity(Models("llama2-7b", "meta/a", "meta/b", None, "llama")) == "llama2-7b"
    assert identity(Models(None, "org/base", "org/chat", None, "llama")) == "org/chat"
    assert identity(Models(None, "org/base", None, "org/lora", "llama")) == "org/base + adapter org/lora"
    chain = Models(None, "m0", None, None, "llama", chain=("m0", "m1"))
    assert identity(chain) == "m0 -> m1"
    assert identity(Models("demo", "m0", None, None, "gemma3", chain=("m0",), chain_adapters=("a",))) == (
        "demo chain"
    )
