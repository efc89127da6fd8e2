"""Which two models a command runs on, and loading them: named pairs or explicit checkpoints.

    >>> models = resolve(pair="demo")                      # the default when nothing is given
    >>> models = resolve(pretrained="meta-llama/Llama-2-7b-hf", finetuned="meta-llama/Llama-2-7b-chat-hf")
    >>> pair = load(models, dtype="auto", device="cuda")   # a ModelPair

A chain of training stages (``tuco.chain``) is given as ``resolve(chain=[M_0, ..., M_K])``, or one
base and stacked adapters ``resolve(chain=[base], chain_adapters=[A_1, ..., A_K])``, or by name
(``chain=["demo"]``: Gemma-3-270m base -> + chat LoRA -> + caution LoRA); it loads as a ``ModelChain``.

A name is one of the embedded demo pairs (``demo``: Gemma-3-270m base -> its chat LoRA;
``demo-safety``: SmolLM2-135M-Instruct -> its safety LoRA) or one of the paper's pairs
(``tuco.registry``). ``Models.to_dict()`` is what results files and experiment
settings record: ids or directories and the model type.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class Models:
    pair: str | None  # the name it was given by, if any
    pretrained: str
    finetuned: str | None  # a full fine-tuned model, or
    adapter: str | None  # a PEFT adapter on top of ``pretrained``
    model_type: str | None
    system: str | None = None  # the named pair's system prompt (paper pairs)
    chain: tuple[str, ...] | None = None  # a chain's checkpoints M_0 .. M_K (or its one base)
    chain_adapters: tuple[str, ...] | None = None  # ... and the adapters stacked on that base

    def to_dict(self) -> dict:
        skip = {"system"} | (
            {"chain", "chain_adapters"} if self.chain is None else set()
        )  # older runs resume
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }


def resolve_chain(chain: list[str], adapters: list[str] | None, trust_remote_code: bool = False) -> Models:
    """The models of a chain: checkpoints M_0 .. M_K, one base with ``adapters``, or a named chain."""
    from .loading import model_type

    name = None
    if chain == ["demo"] and not adapters:
        from .demo.stage import demo_chain

        built = demo_chain()
        name, chain, adapters = "demo", [str(built.base)], [str(a) for a in built.adapters]
    if adapters and len(chain) != 1:
        raise UsageError(
            f"--chain-adapters stack on one base: give --chain BASE, not {len(chain)} checkpoints"
        )
    if not adapters and len(chain) < 2:
        raise UsageError(
            f"--chain {' '.join(chain)}: give two or more checkpoints (M_0 first), one base with "
            "--chain-adapters, or --chain demo"
        )
    kind = model_type(chain[-1], trust_remote_code)  # the last checkpoint, or the one base
    finetuned = None if adapters else chain[-1]
    return Models(
        name,
        chain[0],
        finetuned,
        None,
        kind,
        chain=tuple(chain),
        chain_adapters=tuple(adapters) if adapters else None,
    )


def resolve(
    pair: str | None = None,
    pretrained: str | None = None,
    finetuned: str | None = None,
    adapter: str | None = None,
    trust_remote_code: bool = False,
) -> Models:
    """The models of a named ``pair`` (``demo`` when nothing is given), or the checkpoints given."""
    from . import registry
    from .demo.pairs import NAMES as DEMO_NAMES
    from .loading import model_type

    options = (("pretrained", pretrained), ("finetuned", finetuned), ("adapter", adapter))
    given = [f"--{k}" for k, v in options if v]
    if pair and given:
        raise UsageError(f"give --pair or {'/'.join(given)}, not both (--pair {pair} names both models)")
    system = None
    if not pair and not given:
        pair = "demo"
    if pair in DEMO_NAMES:
        from .demo.pairs import demo_pair

        demo = demo_pair(pair)
        pretrained, finetuned, adapter = str(demo.pretrained), None, str(demo.adapter)
    elif pair:
        try:
            spec = registry.get_pair(pair)
        except KeyError as e:
            raise UsageError(f"{e.args[0]}; the embedded pairs: {', '.join(DEMO_NAMES)}") from None
        pretrained, finetuned, adapter, system = spec.pretrained, spec.finetuned, None, spec.system
    elif not pretrained:
        raise UsageError("give --pretrained with --finetuned or --adapter (or --pair NAME)")
    if (finetuned is None) == (adapter is None):
        raise UsageError("give exactly one of --finetuned (a full model) or --adapter (a PEFT adapter)")
    kind = model_type(finetuned or pretrained, trust_remote_code)
    return Models(pair, pretrained, finetuned, adapter, kind, system)


def resolve_options(options) -> Models:
    """``resolve`` from the command line's options (``--pair``, ``--pretrained``, ... or ``--chain``)."""
    chain, adapters = getattr(options, "chain", None), getattr(options, "chain_adapters", None)
    if adapters and not chain:
        raise UsageError("--chain-adapters needs --chain BASE (the model they stack on)")
    if chain:
        given = [
            f"--{k}" for k in ("pair", "pretrained", "finetuned", "adapter") if getattr(options, k, None)
        ]
        if given:
            raise UsageError(f"give --chain or {'/'.join(given)}, not both (--chain names every model)")
        return resolve_chain(list(chain), list(adapters) if adapters else None, options.trust_remote_code)
    return resolve(
        options.pair, options.pretrained, options.finetuned, options.adapter, options.trust_remote_code
    )


def load_options(models: Models, options, *, batch_invariant: bool = False):
    """``load`` with the command line's options (``--dtype``, ``--device``, ``--device-map``, ...);
    ``batch_invariant``: "auto" means float32 (``tuco serve``, ``tuco calibrate``)."""
    return load(
        models,
        options.dtype,
        options.device,
        options.device_map,
        options.trust_remote_code,
        options.seed,
        batch_invariant=batch_invariant,
    )


MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def placement(device: str | None, device_map: str | None):
    """``--device``/``--device-map`` as ``from_pretrained`` takes them: a JSON map becomes a dict;
    with neither, cuda when available (one GPU per rank under torchrun), else cpu. A device this
    machine lacks is a ``UsageError`` naming it."""
    import torch

    if device and device_map:
        raise UsageError("give --device or --device-map, not both")
    if device_map and device_map.strip().startswith("{"):
        try:
            chosen = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise UsageError(f"--device-map is not valid JSON: {e}") from e
        if not isinstance(chosen, dict):
            raise UsageError("--device-map JSON must map module names to devices")
        for value in chosen.values():
            if value != "disk":  # an int is a CUDA device's index
                check_device(f"cuda:{value}" if isinstance(value, int) else str(value), "--device-map")
        return chosen
    if device_map:
        if device_map not in MAP_STRATEGIES:
            check_device(device_map, "--device-map")
        return device_map
    chosen = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if chosen == "cuda" and "LOCAL_RANK" in os.environ:  # data-parallel: one GPU per rank
        chosen = f"cuda:{os.environ['LOCAL_RANK']}"
    check_device(chosen, "--device")
    return chosen


def check_device(name: str, option: str) -> None:
    """Refuse a device string torch does not know, or a device this machine does not have."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"{option} {name!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UsageError(
                f"{option} {name}: torch {torch.__version__} ({build}) sees no CUDA GPU here; "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} {name}: MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps", "xpu", "npu", "hpu", "meta"):
        raise UsageError(f"{option} {name!r}: use cpu, cuda, cuda:N or mps")


def load(
    models: Models,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    *,
    batch_invariant: bool = False,
):
    """The ``ModelPair`` of ``models``."""
    import torch

    from . import registry
    from .pair import ModelPair

    torch.manual_seed(seed)
    if models.chain is not None:
        from .chain import ModelChain

        chain = ModelChain.from_pretrained(
            list(models.chain),
            adapters=list(models.chain_adapters) if models.chain_adapters else None,
            dtype=dtype,
            device_map=placement(device, device_map),
            trust_remote_code=trust_remote_code,
            batch_invariant=batch_invariant,
        )
        chain.identity = identity(models)
        return chain
    paper = models.pair in registry.PAIRS  # the paper's prompt strings, never the checkpoint's template
    pair = ModelPair.from_pretrained(
        models.pretrained,
        models.finetuned,
        adapter=models.adapter,
        dtype=dtype,
        device_map=placement(device, device_map),
        trust_remote_code=trust_remote_code,
        batch_invariant=batch_invariant,
        prompt_format=functools.partial(registry.paper_chat, models.pair) if paper else None,
    )
    pair.identity = identity(models)
    return pair


def identity(models: Models) -> str:
    """A name for ``models`` that is the same on every machine: a demo pair's name with its recipe's
    hash (its checkpoints are local folders that differ between machines), a named pair's name, else
    the checkpoints as given (a hub id, or a local folder: then only on this machine)."""
    from .demo.pairs import NAMES as DEMO_NAMES

    if models.chain is not None:
        given = " -> ".join([*models.chain, *(models.chain_adapters or ())])
        return f"{models.pair} chain" if models.pair else given
    if models.pair in DEMO_NAMES and models.adapter:
        metrics = Path(models.adapter) / "metrics.json"
        recipe = json.loads(metrics.read_text()).get("recipe") if metrics.exists() else None
        return f"{models.pair}@{recipe or 'unknown recipe'}"
    if models.pair:
        return models.pair
    from .pair import checkpoint_identity

    return checkpoint_identity(models.pretrained, models.finetuned, models.adapter)
