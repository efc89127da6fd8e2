"""Loading the two models of a pair: configs, weights, tokenizers, dtype and a joint device map.

Everything goes through transformers' ``from_pretrained``, so hub ids and local directories work
alike; a failure names which model (pretrained or finetuned) and what to check.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from . import compat
from .hardware import resolve_dtype

log = logging.getLogger("tuco")


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


def load_models(
    pretrained: str,
    finetuned: str | None = None,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    tokenizer: str | None = None,
    use_finetuned_tokenizer: bool = False,
    trust_remote_code: bool = False,
    **model_kwargs,
):
    """(pretrained model or None in adapter mode, fine-tuned model or PEFT model, tokenizer,
    pretrained tokenizer or None, why this dtype): what ``ModelPair.from_pretrained`` pairs.

    ``dtype="auto"`` chooses from the hardware (``tuco.hardware``: the checkpoint's dtype on a GPU;
    on CPU bf16 only where it is native, else float32), the same for both models, and logs why.
    ``dtype`` and ``model_kwargs`` (e.g. ``offload_folder``) go to
    ``AutoModelForCausalLM.from_pretrained``. ``device_map`` ("auto", "balanced", "sequential", a
    device, or a module -> device dict) places both models alike, so that block l of both always
    sits on the same device; with "auto" & co. the placement is computed for the two models
    together within ``max_memory`` (half of each device's budget per model), with CPU and disk
    offload as accelerate's fallbacks. Configs and tokenizers are checked before any weight loads.
    """
    from transformers import AutoConfig

    if (finetuned is None) == (adapter is None):
        raise ValueError("Pass exactly one of finetuned= (a full model) or adapter= (a PEFT adapter).")
    kwargs = dict(model_kwargs, trust_remote_code=trust_remote_code)
    configs = [
        load(AutoConfig.from_pretrained, name, which, trust_remote_code=trust_remote_code)
        for name, which in ((pretrained, "pretrained"), (finetuned, "finetuned"))
        if name is not None
    ]
    config = configs[-1]  # the fine-tuned checkpoint's (the base's for an adapter)
    kwargs["dtype"], why = resolve_dtype(dtype, device_map, checkpoint_dtype(config))
    if kwargs["dtype"] is None:
        del kwargs["dtype"]
    log.info("dtype %s (%s)", str(kwargs.get("dtype", "default")).removeprefix("torch."), why)
    if adapter is not None:
        tok = load_tokenizer(tokenizer or adapter, fallback=pretrained, trust=trust_remote_code)
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        base = load_model(pretrained, "pretrained", device_map=device_map, **kwargs)
        from peft import PeftModel

        try:
            # the adapter computes in the model's dtype, as a merged model would: fp32 adapters on a
            # bf16 base upcast every LoRA input, which costs more activation memory than the base
            peft_model = PeftModel.from_pretrained(base, adapter, autocast_adapter_dtype=False)
        except (OSError, ValueError) as e:
            raise OSError(f"Could not load the adapter {adapter!r}: {e}") from e
        return None, peft_model.eval(), tok, None, why
    assert finetuned is not None  # exactly one of finetuned and adapter: checked above
    compat.check_configs(*configs)
    ft_tok = load_tokenizer(tokenizer or finetuned, fallback=pretrained, trust=trust_remote_code)
    pt_tok = load_tokenizer(pretrained, fallback=None, trust=trust_remote_code)
    compat.check_tokenizers(pt_tok, ft_tok, use_finetuned_tokenizer)
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        device_map = joint_device_map(config, device_map, max_memory, kwargs.get("dtype"))
    # The same placement for both: module names agree (same architecture).
    ft = load_model(finetuned, "finetuned", device_map=device_map, **kwargs)
    pt = load_model(pretrained, "pretrained", device_map=device_map, **kwargs)
    return pt, ft, ft_tok, pt_tok, why


def model_type(name_or_path: str, trust_remote_code: bool = False) -> str | None:
    """The ``model_type`` of a checkpoint's config (None when the config cannot be read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code).model_type
    except (OSError, ValueError):
        return None
