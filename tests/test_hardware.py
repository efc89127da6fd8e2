"""The dtype rule: "auto" chooses from the hardware, an explicit dtype always wins."""

import json

import pytest
import torch
from conftest import PROMPTS, make_pair
from transformers import AutoModelForCausalLM

from tuco import ModelPair, hardware
from tuco.compat import IncompatiblePairError


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) bf16 instructions."""

    def set_to(value: bool):
        monkeypatch.delenv(hardware.ENV, raising=False)  # the suite's pin off: torch's own probe
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512" if value else "AVX2")

    return set_to


@pytest.mark.parametrize("checkpoint", [torch.bfloat16, torch.float16, torch.float32, None])
def test_cpu_without_native_bf16_runs_in_float32(native_bf16, checkpoint):
    native_bf16(False)
    dtype, why = hardware.auto_dtype("cpu", checkpoint)
    assert dtype == torch.float32
    assert "AVX2" in why and "no native bf16" in why
    assert hardware.cpu_capability() == "AVX2"


@pytest.mark.parametrize("checkpoint", [torch.bfloat16, torch.float32, None])
def test_cpu_with_native_bf16_runs_in_bf16(native_bf16, checkpoint):
    native_bf16(True)
    dtype, why = hardware.auto_dtype(None, checkpoint)  # None: transformers' default device, the CPU
    assert dtype == torch.bfloat16 and "native bf16" in why
    assert hardware.cpu_capability() == "AVX512+bf16"


def test_cuda_keeps_the_checkpoints_dtype(monkeypatch, native_bf16):
    native_bf16(False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.auto_dtype("cuda:0", "bfloat16")[0] == torch.bfloat16
    assert hardware.auto_dtype("auto", torch.float16)[0] == torch.float16  # "auto" map: on the GPU
    assert hardware.auto_dtype({"model": 0, "lm_head": "cpu"}, torch.bfloat16)[0] == torch.bfloat16
    assert hardware.auto_dtype("cuda", None)[0] == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    dtype, why = hardware.auto_dtype("cuda", torch.bfloat16)
    assert dtype == torch.float16 and "no bf16" in why
    assert hardware.auto_dtype({"model": "cpu"}, torch.bfloat16)[0] == torch.float32  # all on the CPU


def test_explicit_dtype_wins(native_bf16):
    native_bf16(False)
    assert hardware.resolve_dtype("bfloat16", "cpu", torch.float32) == (torch.bfloat16, "explicit")
    assert hardware.resolve_dtype(torch.float16, "cpu", None) == (torch.float16, "explicit")
    assert hardware.resolve_dtype(None, "cpu", torch.bfloat16)[0] is None
    with pytest.raises(ValueError, match="dtype='float8' is not a torch dtype"):
        hardware.resolve_dtype("float8", "cpu", None)


@pytest.fixture
def saved_pair(tmp_path, tok):
    """A float32 PT and a bf16 FT checkpoint on disk."""
    pair = make_pair("llama", tok)
    pair.pretrained.save_pretrained(tmp_path / "pt")
    ft = AutoModelForCausalLM.from_config(pair.finetuned.config)
    ft.load_state_dict(pair.finetuned.state_dict())
    ft.to(torch.bfloat16).save_pretrained(tmp_path / "ft")
    for name in ("pt", "ft"):
        tok.save_pretrained(tmp_path / name)
    return tmp_path


def test_from_pretrained_auto_follows_the_rule_for_both_models(saved_pair, native_bf16):
    pt, ft = str(saved_pair / "pt"), str(saved_pair / "ft")
    native_bf16(False)
    loaded = ModelPair.from_pretrained(pt, ft, dtype="auto")
    assert loaded.pretrained.dtype == loaded.finetuned.dtype == torch.float32
    assert "no native bf16" in loaded.dtype_reason
    native_bf16(True)
    loaded = ModelPair.from_pretrained(pt, ft, dtype="auto")
    assert loaded.pretrained.dtype == loaded.finetuned.dtype == torch.bfloat16
    assert "native bf16" in loaded.dtype_reason
    native_bf16(False)
    explicit = ModelPair.from_pretrained(pt, ft, dtype="bfloat16")  # explicit wins, even on AVX2
    assert explicit.finetuned.dtype == torch.bfloat16 and explicit.dtype_reason == "explicit"
    with pytest.raises(IncompatiblePairError, match="differ in `dtype`"):  # mixed dtypes: the clear error
        ModelPair(AutoModelForCausalLM.from_pretrained(pt), explicit.finetuned, loaded.tokenizer)


def test_cli_records_the_dtype_and_why(saved_pair, native_bf16, tmp_path, capsys):
    from tuco import cli

    native_bf16(False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(p for p in PROMPTS if isinstance(p, str)) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["score", "--pretrained", str(saved_pair / "pt"), "--finetuned", str(saved_pair / "ft")]
    assert cli.main(argv + ["--prompts", str(prompts), "--out", str(out), "--device", "cpu"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["dtype"] for r in records} == {"float32"}
    assert all("AVX2" in r["dtype_reason"] and "no native bf16" in r["dtype_reason"] for r in records)


def test_the_probe_can_be_pinned(monkeypatch):
    monkeypatch.setenv(hardware.ENV, "1")
    assert hardware.auto_dtype("cpu", None)[0] == torch.bfloat16
    assert hardware.cpu_capability().endswith("+bf16 (pinned)")
    with hardware.assume_cpu(native_bf16=False):  # the context manager wins over the environment
        assert hardware.auto_dtype("cpu", torch.bfloat16)[0] == torch.float32
        with hardware.assume_cpu(native_bf16=True):
            assert hardware.cpu_has_native_bf16()
        assert not hardware.cpu_has_native_bf16()
    monkeypatch.setenv(hardware.ENV, "yes")
    with pytest.raises(ValueError, match="TUCO_CPU_NATIVE_BF16='yes': set it to 1"):
        hardware.cpu_has_native_bf16()
    monkeypatch.delenv(hardware.ENV)
    assert hardware.cpu_has_native_bf16() == hardware.torch_sees_native_bf16()
    assert "pinned" not in hardware.cpu_capability()


@pytest.mark.parametrize("dtype", ["auto", None])
def test_serving_resolves_auto_to_float32_on_any_hardware(native_bf16, dtype):
    native_bf16(True)
    chosen, why = hardware.resolve_dtype("auto", "cpu", torch.bfloat16, batch_invariant=True)
    assert chosen == torch.float32 and "float32, where a request's tokens and TuCo do not depend" in why
    assert hardware.resolve_dtype("bfloat16", "cpu", None, batch_invariant=True)[0] == torch.bfloat16
    assert hardware.resolve_dtype(dtype, "cpu", None)[0] == (torch.bfloat16 if dtype else None)


def test_the_capability_line_tells_amx_apart(native_bf16, monkeypatch):
    native_bf16(True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.cpu_capability() == "AVX512+bf16+amx"
