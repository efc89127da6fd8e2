"""The dtype a pair runs in, chosen from the hardware (``dtype="auto"``).

    >>> dtype, why = auto_dtype("cpu", torch.bfloat16)
    >>> dtype, why          # on an AVX2-only CPU:
    (torch.float32, 'auto: this CPU (AVX2) has no native bf16; bf16 would be emulated, 7-40x slower')

- CUDA (and other accelerators): the checkpoint's own dtype (float32 when it names none); a bf16
  checkpoint on a GPU without bf16 runs in float16.
- CPU: bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), float32 elsewhere,
  whatever the checkpoint says: bf16 on a CPU without it is an emulation, 7x slower forward and
  40x slower backward than float32 (measured on an AVX2-only EPYC).

Components are accumulated in float32 whatever the dtype (``decompose``). An explicit dtype always
wins over this rule. ``cpu_capability()`` is what benchmarks print beside every figure.

The one rule for the library and the command line alike (``ModelPair.from_pretrained`` and every
``--dtype`` default to "auto"), with one exception chosen on purpose: ``resolve_dtype(...,
batch_invariant=True)`` (``tuco serve`` and ``tuco calibrate``) resolves "auto" to float32 on any
hardware, the dtype in which a served request's tokens and TuCo do not depend on the requests
batched with it, and a guard's threshold keeps its false-positive rate (README, "dtype").

Whether the CPU has native bf16 is one probe, ``cpu_has_native_bf16``; it can be pinned, so that
tests (and anyone reproducing a run from another machine) get the same answer on every CPU::

    >>> with assume_cpu(native_bf16=True):      # or TUCO_CPU_NATIVE_BF16=1 in the environment
    ...     auto_dtype("cpu", None)[0]
    torch.bfloat16
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

ENV = "TUCO_CPU_NATIVE_BF16"  # "1" / "0": pin the probe (subprocesses inherit it); unset: ask torch
_pinned: list[bool] = []  # assume_cpu's stack


def cpu_capability() -> str:
    """The CPU's vector capability as torch sees it: "AVX2", "AVX512", "DEFAULT", ... (+ "+bf16",
    + "+amx" where bf16 runs on AMX tiles), with " (pinned)" when the bf16 answer is pinned rather
    than probed."""
    capability = torch.backends.cpu.get_cpu_capability()
    pinned = " (pinned)" if _pinned or os.environ.get(ENV) in ("0", "1") else ""
    bf16 = cpu_has_native_bf16()
    amx = bf16 and not pinned and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return capability + ("+bf16" if bf16 else "") + ("+amx" if amx else "") + pinned


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX tiles), unless pinned
    (``assume_cpu``, then the ``TUCO_CPU_NATIVE_BF16`` environment variable)."""
    if _pinned:
        return _pinned[-1]
    env = os.environ.get(ENV)
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ValueError(f"{ENV}={env!r}: set it to 1 (native bf16), 0 (none) or leave it unset")
    return torch_sees_native_bf16()


def torch_sees_native_bf16() -> bool:
    """The hardware's own answer, as torch reads the CPU's flags."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@contextlib.contextmanager
def assume_cpu(native_bf16: bool) -> Iterator[None]:
    """Within the block, "auto" decides as on a CPU with (True) or without (False) native bf16."""
    _pinned.append(bool(native_bf16))
    try:
        yield
    finally:
        _pinned.pop()


def is_cpu(device_map) -> bool:
    """Whether a ``device_map`` (None, a device, a strategy like "auto", or a module -> device dict)
    puts the model on the CPU (None: transformers' default, the CPU)."""
    if device_map is None:
        return True
    if isinstance(device_map, dict):
        return all(str(d) in ("cpu", "disk") for d in device_map.values())
    if str(device_map) in ("auto", "balanced", "balanced_low_0", "sequential"):
        return not (torch.cuda.is_available() or _mps_available())
    return torch.device(device_map).type == "cpu"


def auto_dtype(device_map, checkpoint: torch.dtype | str | None) -> tuple[torch.dtype, str]:
    """(dtype, reason) for ``dtype="auto"`` on the device that ``device_map`` names."""
    named: torch.dtype | None = getattr(torch, checkpoint) if isinstance(checkpoint, str) else checkpoint
    if is_cpu(device_map):
        if cpu_has_native_bf16():
            return torch.bfloat16, f"auto: this CPU ({cpu_capability()}) has native bf16"
        return torch.float32, (
            f"auto: this CPU ({cpu_capability()}) has no native bf16; bf16 would be emulated, 7-40x slower"
        )
    if named is None:
        return torch.float32, "auto: float32 on an accelerator (the checkpoint names no dtype)"
    if named == torch.bfloat16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16, "auto: the checkpoint's bfloat16 as float16 (this GPU has no bf16)"
    return named, f"auto: the checkpoint's {str(named).removeprefix('torch.')} on an accelerator"


BATCH_INVARIANT_REASON = (
    "auto for serving and calibrating: float32, where a request's tokens and TuCo do not depend on "
    "its batch (bf16 moves them); pass --dtype bfloat16 for speed"
)


def resolve_dtype(
    dtype, device_map, checkpoint, *, batch_invariant: bool = False
) -> tuple[torch.dtype | None, str]:
    """The dtype to load with, and why: "auto" follows ``auto_dtype`` (float32 with
    ``batch_invariant``); a name or a torch.dtype is taken as given; None keeps transformers'
    default (the checkpoint's dtype in 5.x)."""
    if dtype == "auto":
        if batch_invariant:
            return torch.float32, BATCH_INVARIANT_REASON
        return auto_dtype(device_map, checkpoint)
    if dtype is None:
        return None, "transformers' default"
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype: use auto, bfloat16, float16 or float32.")
        dtype = getattr(torch, dtype)
    return dtype, "explicit"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
