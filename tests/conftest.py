import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# What dtype="auto" resolves to must not depend on the CPU the suite runs on: the suite pins the
# probe to "no native bf16" (float32), and the tests of the other branch ask for it (cpu_branch,
# hardware.assume_cpu), so every machine runs both. Subprocesses inherit the pin.
os.environ["TUCO_CPU_NATIVE_BF16"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

from tuco import ModelPair  # noqa: E402
from tuco.testing import byte_tokenizer, perturbed_copy, tiny_model  # noqa: E402

PROMPTS = [
    "Hello world, this is a longer test prompt.",
    "Hi",
    [{"role": "user", "content": "What is up?"}],
    "A medium length one.",
]


@pytest.fixture(scope="session")
def tok():
    return byte_tokenizer()


_PAIRS: dict = {}


def make_pair(arch: str, tokenizer, scale: float = 0.3) -> ModelPair:
    """A tiny random PT and an FT that differs from it in its blocks only (cached per session)."""
    key = (arch, scale)
    if key not in _PAIRS:
        pt = tiny_model(arch)
        _PAIRS[key] = ModelPair(pt, perturbed_copy(pt, scale=scale), tokenizer)
    return _PAIRS[key]


def save_models(root, models: dict) -> None:
    """Each model and the byte tokenizer saved to ``root / name``, as checkpoints the CLI loads."""
    for name, model in models.items():
        model.save_pretrained(root / name)
        byte_tokenizer().save_pretrained(root / name)


def pair_dirs(root):
    """``root`` with a tiny random pair saved in it: ``root / "pt"`` and ``root / "ft"``."""
    pt = tiny_model("llama")
    save_models(root, {"pt": pt, "ft": perturbed_copy(pt, scale=0.3)})
    return root


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def cpu_branch(request, monkeypatch) -> bool:
    """Run the test on both sides of the hardware rule: a CPU without (False) and with (True) native
    bf16, whatever this machine has (subprocesses see it too). The value: native bf16 or not."""
    monkeypatch.setenv("TUCO_CPU_NATIVE_BF16", "1" if request.param else "0")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
