"""Per-layer PTC/FTC vectors on disk: round trip, resume, size estimate, the CLI and the dataset."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import PROMPTS, make_pair, pair_dirs

from tuco import cli
from tuco.errors import RunError, SettingsMismatchError, UsageError
from tuco.vectors import VectorWriter, check_room, estimate_bytes, load_vectors, read_index, vectors_dataset


@pytest.mark.parametrize("per_token", [False, True])
def test_round_trip_equals_the_in_memory_components(tok, tmp_path, per_token):
    pair = make_pair("llama", tok)
    results = pair.score(PROMPTS, vectors=True, per_token=per_token, batch_size=3)
    layers, width = pair.num_layers, 64
    out = VectorWriter(tmp_path / "v", {"finetuned": "ft"}, layers, width, per_token)
    out.write([0, 1], *zip(*(r.vectors for r in results[:2]), strict=True))
    out.write(["c", "d"], *zip(*(r.vectors for r in results[2:]), strict=True))
    loaded = list(load_vectors(tmp_path / "v"))
    assert [item["id"] for item in loaded] == [0, 1, "c", "d"]
    for item, r in zip(loaded, results, strict=True):
        assert torch.equal(item["ptc"], r.vectors[0]) and torch.equal(item["ftc"], r.vectors[1])
        assert item["ftc"].shape == ((r.n_tokens if per_token else 1), layers, width)
        last = item["ftc"][-1]  # [L, d] at the last token: what TuCo reads
        assert last.abs().sum(-1).tolist() == pytest.approx(r.ftc_layers, rel=1e-5)
        assert float(last.sum(0).abs().sum()) == pytest.approx(r.ftc_norm, rel=1e-5)
        assert float(item["ptc"][-1].sum(0).abs().sum()) == pytest.approx(r.ptc_norm, rel=1e-5)
    size = sum(f.stat().st_size for f in (tmp_path / "v").glob("*.safetensors"))
    rows = sum(item["ftc"].shape[0] for item in loaded)
    assert estimate_bytes(rows, layers, width) <= size <= estimate_bytes(rows, layers, width) + 4096


def test_resume_keeps_finished_shards_and_refuses_other_settings(tmp_path):
    vec = torch.zeros(1, 2, 4)
    first = VectorWriter(tmp_path, {"finetuned": "ft"}, 2, 4)
    first.write(["a", "b"], [vec, vec], [vec, vec + 1])
    with pytest.raises(UsageError, match="--resume"):
        VectorWriter(tmp_path, {"finetuned": "ft"}, 2, 4)
    with pytest.raises(SettingsMismatchError, match="meta"):
        VectorWriter(tmp_path, {"finetuned": "other"}, 2, 4, resume=True)
    again = VectorWriter(tmp_path, {"finetuned": "ft"}, 2, 4, resume=True)
    assert again.done == {"a", "b"}
    again.write(["c"], [vec], [vec])
    assert [s["ids"] for s in read_index(tmp_path)["shards"]] == [["a", "b"], ["c"]]
    (tmp_path / "vectors-00002.safetensors").write_bytes(b"half a shard")  # a crash before the index
    fresh = VectorWriter(tmp_path, {"finetuned": "ft"}, 2, 4, overwrite=True)
    assert fresh.done == set() and not list(tmp_path.glob("vectors-*"))


def test_the_disk_check_refuses_what_does_not_fit(tmp_path, monkeypatch):
    assert estimate_bytes(10, 30, 576) == 2 * 10 * 30 * 576 * 4
    check_room(tmp_path / "new" / "dir", 1)  # a directory still to be made: its parent's disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=10**6))
    with pytest.raises(RunError, match=r"need about 0\.00 GB.*0\.00 GB free"):
        check_room(tmp_path, 2 * 10**6)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return pair_dirs(tmp_path_factory.mktemp("pair"))


def test_score_save_vectors_command_resumes_and_loads_as_a_dataset(dirs, tmp_path, caplog):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:2] * 3))
    )
    base = ["score", "--pretrained", dirs / "pt", "--finetuned", dirs / "ft", "--prompts", prompts]
    base += [
        "--out",
        tmp_path / "r.jsonl",
        "--save-vectors",
        tmp_path / "v",
        "--dtype",
        "float32",
        "--batch-size",
        "2",
    ]
    with caplog.at_level("INFO", logger="tuco"):
        assert cli.main([str(a) for a in base]) == 0
    assert "vectors: 0.000 GB for 6 prompts x 3 layers x 64" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    loaded = {item["id"]: item for item in load_vectors(tmp_path / "v")}
    assert sorted(loaded) == sorted(r["id"] for r in records)
    for r in records:
        assert float(loaded[r["id"]]["ftc"][-1].sum(0).abs().sum()) == pytest.approx(r["ftc_norm"], rel=1e-5)
    index = read_index(tmp_path / "v")
    assert index["meta"]["dtype"] == "float32" and index["layers"] == 3 and index["width"] == 64
    shards = len(index["shards"])
    assert cli.main([str(a) for a in [*base, "--resume"]]) == 0  # all done: nothing written again
    assert len(read_index(tmp_path / "v")["shards"]) == shards
    dataset = vectors_dataset(tmp_path / "v")
    assert len(dataset) == 6 * 3 and len(dataset[0]["vector"]) == 64
    assert sorted(set(dataset["layer"])) == [0, 1, 2]
