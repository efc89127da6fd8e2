"""Scale: placement of both models with accelerate (block l of both on one device, CPU and disk
offload) and data-parallel runs under torchrun (shards merged in input order)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tuco import ModelPair
from tuco.loading import joint_device_map
from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
PROMPTS = ["Hello world, this is a test.", "Hi", "Another prompt of middling length.", "x" * 30]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tok = byte_tokenizer()
    pt = tiny_model("llama", num_hidden_layers=4)
    for name, model in (("pt", pt), ("ft", perturbed_copy(pt, scale=0.3))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def test_joint_map_gives_each_model_half_the_budget(dirs):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dirs / "ft")
    roomy = joint_device_map(config, "auto", {"cpu": "1GB"}, torch.float32)
    assert set(roomy.values()) == {"cpu"}
    model_bytes = sum(p.numel() for p in tiny_model("llama", num_hidden_layers=4).parameters()) * 4
    # a budget of one model's size for the two: each gets half, and the rest of its blocks go to disk
    tight = joint_device_map(config, "auto", {"cpu": model_bytes}, torch.float32)
    assert "disk" in tight.values() and "cpu" in tight.values()


def test_offloaded_pair_places_block_l_of_both_together_and_scores_the_same(dirs, tmp_path):
    reference = ModelPair.from_pretrained(str(dirs / "pt"), str(dirs / "ft"), dtype="float32")
    budget = {"cpu": sum(p.numel() for p in reference.finetuned.parameters()) * 4}
    pair = ModelPair.from_pretrained(
        str(dirs / "pt"),
        str(dirs / "ft"),
        dtype="float32",
        device_map="auto",
        max_memory=budget,
        offload_folder=str(tmp_path / "offload"),
    )
    assert pair.finetuned.hf_device_map == pair.pretrained.hf_device_map
    assert "disk" in pair.finetuned.hf_device_map.values()  # really offloaded
    for layer in range(pair.num_layers):
        name = f"model.layers.{layer}"
        placed = {m.hf_device_map.get(name) for m in (pair.pretrained, pair.finetuned)}
        assert len(placed) == 1
    got, expected = pair.score(PROMPTS), reference.score(PROMPTS)
    assert [r.tuco for r in got] == pytest.approx([r.tuco for r in expected], rel=1e-5)
    kw = dict(max_new_tokens=6, do_sample=False)
    assert pair.generate(PROMPTS, alpha=0.5, **kw) == reference.generate(PROMPTS, alpha=0.5, **kw)
    split, split_reference = pair.score(PROMPTS, heads=True), reference.score(PROMPTS, heads=True)
    for a, b in zip(split, split_reference, strict=True):  # attention vs MLP and heads, offloaded
        assert (a.tuco_attn, a.tuco_mlp) == pytest.approx((b.tuco_attn, b.tuco_mlp), rel=1e-5)
        assert a.ftc_heads == [pytest.approx(row, rel=1e-4, abs=1e-6) for row in b.ftc_heads]
        assert a.sum_check <= 1e-5


def test_torchrun_two_processes_equal_one_process(dirs, tmp_path):
    rows = [{"id": f"p{i}", "prompt": PROMPTS[i % 4] + f" #{i}"} for i in range(11)]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [
        "score",
        "--pretrained",
        str(dirs / "pt"),
        "--finetuned",
        str(dirs / "ft"),
        "--prompts",
        str(prompts),
        "--batch-size",
        "1",  # windows of 8 prompts: rank 0 takes prompts 0-7, rank 1 prompts 8-10
        "--quiet",
    ]
    single = tmp_path / "single.jsonl"
    # one thread, as torchrun gives each rank: the same kernels, so the same bits
    proc = subprocess.run(
        [sys.executable, "-m", "tuco", *args, "--out", str(single)],
        env=ENV | {"OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    merged = tmp_path / "merged.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "tuco",
            *args,
            "--out",
            str(merged),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged 2 shards" in proc.stderr
    assert merged.read_bytes() == single.read_bytes()
    assert not list(tmp_path.glob("merged.jsonl.shard-*"))
    assert "8 new records" in proc.stderr and "3 new records" in proc.stderr  # both ranks worked
