"""Loading the two models of a pair: configs, weights, tokenizers, dtype and a joint device map.

Everything goes through transformers' ``from_pretrained``, so hub ids and local directories work
alike; a failure names which model (pretrained or finetuned) and what to check.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from . import compat
from .errors import ModelError
from .hardware import resolve_dtype

log = logging.getLogger("tuco")


def joint_device_map(config, strategy: str, max_memory: dict | None, dtype, share: int = 2) -> dict:
    """A module -> device map for ONE of ``share`` same-shaped models that share the devices: each
    gets that part of every device's budget, so that the same map holds all (block l of all together)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory, get_max_memory
    from transformers import AutoModelForCausalLM

    dtype = dtype if isinstance(dtype, torch.dtype) else checkpoint_dtype(config) or torch.float32
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype=dtype)
    no_split = list(getattr(empty, "_no_split_modules", None) or [])
    budget = {
        device: size // share for device, size in get_max_memory(max_memory).items() if device != "disk"
    }
    gpus = [d for d in budget if d != "cpu"]
    if strategy != "sequential" and len(gpus) > 1:
        budget = get_balanced_memory(empty, budget, no_split, dtype, low_zero=strategy == "balanced_low_0")
    return infer_auto_device_map(empty, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _where(name: str) -> str:
    """What a failed load most likely means for ``name``: a local directory's files, or the hub."""
    path = Path(name)
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return f"the directory {name} holds {', '.join(files) or 'no model files'}"
    if path.exists():
        return f"{name} is a file; give the directory that holds config.json and the weights"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return f"there is no directory {name}"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return f"there is no such local directory, and {name!r} is not " + (
        "in the local hub cache (HF_HUB_OFFLINE=1: no downloads)"
        if offline
        else "a hub id that could be fetched"
    )


def _hint(error: Exception) -> str:
    text = f"{type(error).__name__} {error}"
    if "Safetensor" in text or "deserializ" in text or "header" in text.lower():
        return " A weight file is truncated or corrupt: download or save it again."
    if "pickle" in text.lower() or "weights_only" in text:
        return (
            " The checkpoint is a pickle that torch refuses to load safely (weights_only): convert it "
            "to safetensors from a trusted copy."
        )
    if "trust_remote_code" in text:
        return " The checkpoint runs its own code: pass --trust-remote-code if you trust it."
    return ""


def load(loader, name: str, which: str, **kwargs):
    """``loader(name, **kwargs)``; any failure becomes a ``ModelError`` naming the model and the fix."""
    try:
        return loader(name, **kwargs)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # transformers, safetensors, torch and peft raise many kinds
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # no terminal colours
        cause = (text.splitlines() or [""])[0].rstrip(". ")[:300]
        raise ModelError(
            f"Could not load the {which} {name!r} ({_where(name)}): {type(e).__name__}: {cause}.{_hint(e)}"
        ) from e


def load_model(name: str, which: str, **kwargs) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return load(AutoModelForCausalLM.from_pretrained, name, f"{which} model", **kwargs).eval()


def has_tokenizer_files(name: str) -> bool:
    """Whether ``name`` ships a tokenizer: True for a local directory with tokenizer files and for hub
    ids (whose files are not known here), False for a local directory without them."""
    path = Path(name)
    return not path.is_dir() or any((path / f).exists() for f in TOKENIZER_FILES)


def load_tokenizer(name: str, which: str, fallback: str | None, trust: bool):
    """The tokenizer of ``name``; when ``name`` is a local directory without tokenizer files, the one
    of ``fallback`` (logged), or None if that has none either. A tokenizer that is there but fails
    to load is a ``ModelError`` (never silently replaced)."""
    from transformers import AutoTokenizer

    if not has_tokenizer_files(name):
        if fallback is None or not has_tokenizer_files(fallback):
            log.warning("the %s %s has no tokenizer files: no tokenizer check", which, name)
            return None
        if which == "adapter":  # the usual case: a LoRA adapter uses its base model's tokenizer
            log.info("tokenizer: the base model's (%s); the adapter ships none", fallback)
        else:
            log.warning(
                "the %s %s has no tokenizer files: using the pretrained model's (%s); the tokenizer "
                "check compares it with itself",
                which,
                name,
                fallback,
            )
        name, which = fallback, "pretrained model"
    elif fallback is not None and not Path(name).is_dir():  # a hub id: its files are known only now
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=trust)
        except OSError:  # no tokenizer files in that repository (a parse error is not caught)
            log.warning("the %s %s has no tokenizer: using the pretrained one (%s)", which, name, fallback)
            name, which = fallback, "pretrained model"
    return load(AutoTokenizer.from_pretrained, name, f"{which}'s tokenizer", trust_remote_code=trust)


def checkpoint_dtype(config) -> torch.dtype | None:
    """The dtype a checkpoint's config says its weights are saved in (None when it names none)."""
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, saved) if isinstance(saved, str) else saved


def _choose_dtype(kwargs: dict, dtype, device_map, config, batch_invariant: bool) -> str:
    """Put the dtype ``from_pretrained`` gets into ``kwargs`` (none: transformers' default), log it,
    and return why it was chosen (``tuco.hardware.resolve_dtype``)."""
    kwargs["dtype"], why = resolve_dtype(
        dtype, device_map, checkpoint_dtype(config), batch_invariant=batch_invariant
    )
    if kwargs["dtype"] is None:
        del kwargs["dtype"]
    log.info("dtype %s (%s)", str(kwargs.get("dtype", "default")).removeprefix("torch."), why)
    return why


def load_models(
    pretrained: str,
    finetuned: str | None = None,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    tokenizer: str | None = None,
    use_finetuned_tokenizer: bool = False,
    trust_remote_code: bool = False,
    batch_invariant: bool = False,
    **model_kwargs,
):
    """(pretrained model or None in adapter mode, fine-tuned model or PEFT model, tokenizer,
    pretrained tokenizer or None, why this dtype): what ``ModelPair.from_pretrained`` pairs.

    ``dtype="auto"`` chooses from the hardware (``tuco.hardware``: the checkpoint's dtype on a GPU;
    on CPU bf16 only where it is native, else float32), the same for both models, and logs why;
    with ``batch_invariant=True`` (serving, calibrating a guard) "auto" is float32 everywhere.
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
        load(AutoConfig.from_pretrained, name, f"{which} model", trust_remote_code=trust_remote_code)
        for name, which in ((pretrained, "pretrained"), (finetuned, "finetuned"))
        if name is not None
    ]
    config = configs[-1]  # the fine-tuned checkpoint's (the base's for an adapter)
    why = _choose_dtype(kwargs, dtype, device_map, config, batch_invariant)
    if adapter is not None:
        from peft import PeftConfig

        load(PeftConfig.from_pretrained, adapter, "adapter")  # cheap: a typo fails before any weight loads
        tok = load_tokenizer(tokenizer or adapter, "adapter", fallback=pretrained, trust=trust_remote_code)
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        base = load_model(pretrained, "pretrained", device_map=device_map, **kwargs)
        from peft import PeftModel

        # the adapter computes in the model's dtype, as a merged model would: fp32 adapters on a
        # bf16 base upcast every LoRA input, which costs more activation memory than the base
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            peft_model = load(
                lambda name: PeftModel.from_pretrained(base, name, autocast_adapter_dtype=False),
                adapter,
                "adapter",
            )
        return None, peft_model.eval(), tok, None, why
    assert finetuned is not None  # exactly one of finetuned and adapter: checked above
    compat.check_configs(*configs)
    ft_tok = load_tokenizer(
        tokenizer or finetuned, "finetuned model", fallback=pretrained, trust=trust_remote_code
    )
    pt_tok = load_tokenizer(pretrained, "pretrained model", fallback=None, trust=trust_remote_code)
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
    except Exception:  # loading reports it properly (ModelError)
        return None


def load_chain(
    checkpoints: list[str],
    *,
    adapters: list[str] | None = None,
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    tokenizer: str | None = None,
    use_finetuned_tokenizer: bool = False,
    trust_remote_code: bool = False,
    batch_invariant: bool = False,
    **model_kwargs,
):
    """(models M_0 .. M_K, tokenizer, adapter names or None, why this dtype): what
    ``ModelChain.from_pretrained`` chains. Full checkpoints: each neighbour pair is checked as
    ``load_models`` checks a pair (configs before any weight, tokenizers), one dtype and one device
    map for all (each model gets 1/(K+1) of every device's budget). With ``adapters``: one base
    checkpoint and one PEFT model holding every adapter, to be stacked in order (one base copy)."""
    from transformers import AutoConfig

    if adapters:
        if len(checkpoints) != 1:
            raise ValueError(f"With adapters, give one base checkpoint (M_0), not {len(checkpoints)}.")
        _, peft_model, tok, _, why = load_models(
            checkpoints[0],
            adapter=adapters[0],
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            tokenizer=tokenizer,
            trust_remote_code=trust_remote_code,
            batch_invariant=batch_invariant,
            **model_kwargs,
        )
        names = ["default"]
        for k, path in enumerate(adapters[1:], start=2):
            names.append(f"stage{k}")
            load(
                lambda p: peft_model.load_adapter(p, adapter_name=names[-1], autocast_adapter_dtype=False),
                path,
                f"adapter of stage {k}",
            )
        return [peft_model], tok, names, why
    if len(checkpoints) < 2:
        raise ValueError(f"A chain needs at least two checkpoints (M_0 and M_1), not {len(checkpoints)}.")
    kwargs = dict(model_kwargs, trust_remote_code=trust_remote_code)
    configs = [
        load(
            AutoConfig.from_pretrained,
            name,
            f"checkpoint {k} of the chain",
            trust_remote_code=trust_remote_code,
        )
        for k, name in enumerate(checkpoints)
    ]
    for k in range(1, len(configs)):
        try:
            compat.check_configs(configs[k - 1], configs[k])
        except ModelError as e:
            raise ModelError(f"checkpoints {k - 1} and {k} of the chain do not pair: {e}") from e
    why = _choose_dtype(kwargs, dtype, device_map, configs[-1], batch_invariant)
    toks = [
        load_tokenizer(
            name, f"checkpoint {k}", fallback=checkpoints[0] if k else None, trust=trust_remote_code
        )
        for k, name in enumerate(checkpoints)
    ]
    for k in range(1, len(toks)):
        compat.check_tokenizers(toks[k - 1], toks[k], use_finetuned_tokenizer)
    if tokenizer is not None:
        toks[-1] = load_tokenizer(tokenizer, "tokenizer", fallback=None, trust=trust_remote_code)
    tok = toks[-1]
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        device_map = joint_device_map(
            configs[-1], device_map, max_memory, kwargs.get("dtype"), len(checkpoints)
        )
    models = [
        load_model(name, f"checkpoint {k} of the chain", device_map=device_map, **kwargs)
        for k, name in enumerate(checkpoints)
    ]
    return models, tok, None, why
