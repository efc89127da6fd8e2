import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
