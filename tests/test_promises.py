"""What the monitor promises, on both sides of the hardware rule (a CPU with and without native bf16,
whatever this machine has): a served request does not depend on its batch, and a guard keeps its
false-positive rate on the prompts it was calibrated on. Both hold because serving and calibrating
resolve ``dtype="auto"`` to float32; in bf16 the server says that they may not."""

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from test_cli import dirs, models, run_tuco, write_jsonl  # noqa: F401 (dirs is a fixture)
from test_server import serving

from tuco import ModelPair
from tuco.errors import UsageError
from tuco.guard import Guard
from tuco.server import create_app

PROMPTS = [f"Question {i}: what is {'very ' * (i % 5)}interesting about {i * 7}?" for i in range(12)]


def served_pair(dirs):  # noqa: F811
    """The pair as ``tuco serve --dtype auto`` loads it."""
    return ModelPair.from_pretrained(str(dirs / "pt"), str(dirs / "ft"), batch_invariant=True)


def test_auto_is_the_hardware_rule_except_for_serving(dirs, cpu_branch):  # noqa: F811
    fastest = ModelPair.from_pretrained(str(dirs / "pt"), str(dirs / "ft"))  # the library's default
    assert fastest.finetuned.dtype == (torch.bfloat16 if cpu_branch else torch.float32)
    assert ("has native bf16" if cpu_branch else "no native bf16") in fastest.dtype_reason
    served = served_pair(dirs)
    assert served.finetuned.dtype == served.pretrained.dtype == torch.float32
    assert "auto for serving and calibrating: float32" in served.dtype_reason


def complete(base: str, prompt: str) -> dict:
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0}
    response = httpx.post(f"{base}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_served_request_does_not_depend_on_its_batch(dirs, cpu_branch):  # noqa: F811
    pair = served_pair(dirs)
    with serving(create_app(pair, max_batch=6, window=0.2)) as base:
        alone = [complete(base, p) for p in PROMPTS[:6]]
        with ThreadPoolExecutor(6) as pool:
            batched = list(pool.map(lambda p: complete(base, p), PROMPTS[:6]))
        metrics = httpx.get(f"{base}/metrics").text
    peak = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("tuco_peak_rows"))
    assert peak > 1  # the 6 concurrent ones decoded side by side
    for one, many in zip(alone, batched, strict=True):
        assert many["choices"][0]["text"] == one["choices"][0]["text"]
        assert many["tuco"]["prompt"] == pytest.approx(one["tuco"]["prompt"], abs=1e-5)
        assert many["tuco"]["tokens"] == pytest.approx(one["tuco"]["tokens"], abs=1e-5)


def test_a_guard_keeps_its_rate_on_its_own_prompts_when_served(dirs, tmp_path, cpu_branch):  # noqa: F811
    benign = write_jsonl(tmp_path / "b.jsonl", [{"prompt": p} for p in PROMPTS])
    out = tmp_path / "guard.json"
    proc = run_tuco("calibrate", *models(dirs), "--benign", benign, "--fpr", "0.5", "--out", out)
    assert proc.returncode == 0, proc.stderr
    guard = Guard.load(out)
    assert guard.dtype == "float32" and "float32 (auto for serving" in proc.stdout
    with serving(create_app(served_pair(dirs), guard=guard, max_batch=4, window=0.2)) as base:

        def flagged(prompt: str) -> bool:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0}
            answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120).json()
            return answer["tuco"]["flagged"]

        with ThreadPoolExecutor(len(PROMPTS)) as pool:  # batched as traffic comes, not as calibrated
            flags = list(pool.map(flagged, PROMPTS))
    target = guard.measured_fpr * len(PROMPTS)
    assert abs(sum(flags) - target) <= 1, (sum(flags), target)


def test_serving_in_bf16_warns_and_refuses_a_guard_of_another_dtype(dirs, caplog):  # noqa: F811
    pair = ModelPair.from_pretrained(str(dirs / "pt"), str(dirs / "ft"), dtype="bfloat16")
    with caplog.at_level(logging.WARNING, logger="tuco"):
        create_app(pair)
    assert "bfloat16: a request's tokens and TuCo may change with the requests batched" in caplog.text
    guard = Guard(threshold=0.2, fpr=0.05, benign=20, measured_fpr=0.05, dtype="float32")
    with pytest.raises(UsageError, match="calibrated in float32, the server runs in bfloat16"):
        create_app(pair, guard=guard)
    create_app(pair, guard=Guard(threshold=0.2, fpr=0.05, benign=20, measured_fpr=0.05, dtype="bfloat16"))


def test_serve_command_refuses_a_guard_of_another_dtype(dirs, tmp_path):  # noqa: F811
    guard = tmp_path / "guard.json"
    Guard(threshold=0.2, fpr=0.05, benign=20, measured_fpr=0.05, dtype="bfloat16").save(guard)
    proc = run_tuco("serve", *models(dirs), "--guard", guard, "--port", "1")
    assert proc.returncode == 2 and "calibrate again with --dtype float32" in proc.stderr, proc.stderr
