"""Loading the two models of a pair: configs, weights, tokenizers, dtype and a joint device map.

Everything goes through transformers' ``from_pretrained``, so hub ids and local directories work
alike; a failure names which model (pretrained or finetuned) and what to check.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def joint_device_map(config, strategy: str, max_memory: dict | None, dtype) -> dict:
    """A module -> device map for ONE of two same-shaped models that share the devices: each gets
    half of every device's budget, so that the same map holds both (block l of both together)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, get_max_memory
    from transformers import AutoModelForCausalLM

    dtype = dtype if isinstance(dtype, torch.dtype) else checkpoint_dtype(config) or torch.float32
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype=dtype)
    no_split = list(getattr(empty, "_no_split_modules", None) or [])
    budget = {device: size // 2 for device, size in get_max_memory(max_memory).items() if device != "disk"}
    gpus = [d for d in budget if d != "cpu"]
    if strategy != "sequential" and len(gpus) > 1:
        budget = get_balanced_memory(empty, budget, no_split, dtype, low_zero=strategy == "balanced_low_0")
    return infer_auto_device_map(empty, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)


def load(loader, name: str, which: str, **kwargs):
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError) as e:
        raise OSError(
            f"Could not load the {which} model {name!r}: it is not a local directory with a config.json "
            f"and could not be fetched from the hub (offline, or the id is wrong). Cause: {e}"
        ) from e


def load_model(name: str, which: str, **kwargs) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return load(AutoModelForCausalLM.from_pretrained, name, which, **kwargs).eval()


def load_tokenizer(name: str, fallback: str | None, trust: bool):
    from transformers import AutoTokenizer

    for candidate in filter(None, (name, fallback)):
        try:
            return AutoTokenizer.from_pretrained(candidate, trust_remote_code=trust)
        except (OSError, ValueError, TypeError):
            continue
    return None


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's config says its weights are saved in (None when it names none)."""
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, saved) if isinstance(saved, str) else saved


def model_type(name_or_path: str, trust_remote_code: bool = False) -> str | None:
    """The ``model_type`` of a checkpoint's config (None when the config cannot be read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError):
        return None
