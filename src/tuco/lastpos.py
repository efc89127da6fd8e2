"""A pre-trained block at the last position only: the fast path of last-token TuCo.

TuCo reads PTC_l at the last prompt token alone, and at alpha = 1 the PT blocks never feed the
stream. A block's output at position n depends on the other positions only through attention's
keys and values over its input x_l, so each PT block runs twice, cheaply::

    1. capture: block(x_l)          [b, s, d]  attention keeps the keys/values it is given
                                               [b, kv_heads, s, hd] and stops the block there
                                               (no output projection, no MLP over s positions;
                                               separate ``q_proj`` layers return no queries:
                                               [b, s, 0], so no rotary work either; a block whose
                                               code needs real-width queries gets zeros instead)
    2. query:   block(x_l[:, -1:])  [b, 1, d]  every position-shaped argument cut to the last
                                               position; attention uses the captured keys/values

Both runs go through transformers' own block code (norms, rotary embeddings, qk-norms, sliding
window masks, MoE routers, parallel residuals all apply as usual); the only thing swapped is the
attention function, through transformers' ``AttentionInterface``. Batches must be left-padded, so
that the last real token of every row sits at index -1.

A block falls back to the general path (the PT block on every position, run again from scratch)
when it holds another sequence mixer than attention (recurrent, state-space, convolution layers),
when it calls no attention through the interface or calls it more than once, or when it gets a
position-shaped argument this module does not know how to cut; each such block is logged once.
The attention setting lives on the model's config while a PT block runs: do not score with one
model from two threads at once.

    >>> pt_last = last_position_output(pt_block, args, kwargs)     # [b, 1, d]
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .blocks import hidden

log = logging.getLogger("tuco")
ATTENTION = "tuco_last_position"
_OTHER_MIXERS = ("mamba", "ssm", "recurrent", "linearattention", "deltanet", "shortconv", "rwkv")


class _Captured(Exception):
    """Raised by the capture run once attention has its keys and values: the rest of the block is skipped."""


class _Unsupported(Exception):
    """The block cannot run at the last position alone: use the general path."""


class _State(threading.local):
    mode: str | None = None  # "capture" or "query"
    kv: tuple[torch.Tensor, torch.Tensor] | None = None
    originals: dict = {}  # id(config) -> the attention implementation it had


_state = _State()
_logged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> reasons logged


def _attention(module, query, key, value, attention_mask, **kwargs):
    if _state.mode == "capture":
        _state.kv = (key, value)
        raise _Captured
    if _state.mode != "query" or _state.kv is None:  # a second attention call in one block
        raise _Unsupported("more than one attention call in the block")
    (key, value), _state.kv = _state.kv, None
    name = _state.originals[id(module.config)]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if name == "eager" and eager is None:
        raise _Unsupported(f"no eager attention function in {type(module).__module__}")
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(name, eager)
    if name == "sdpa" and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
        # One query position: the CPU's half-precision SDPA kernels cost about 5x the float32 one
        # here (8 rows x 8 heads x 128 keys: 590 vs 122 us), so attend in float32 and round back.
        mask = (
            attention_mask
            if attention_mask is None or attention_mask.dtype == torch.bool
            else attention_mask.float()
        )
        out, weights = attend(module, query.float(), key.float(), value.float(), mask, **kwargs)
        return out.to(query.dtype), weights
    return attend(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION, _attention)


@dataclass
class _Plan:
    """What the fast path needs to know of a block, found once (``_plan``)."""

    mixer: str | None  # a sequence mixer besides attention, or None
    configs: dict[int, Any]  # id -> the configs that carry an attention setting
    queries: list[tuple[str, nn.Module]]  # (path, layer) of its separate query projections


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # block -> _Plan


def _plan(block: nn.Module) -> _Plan:
    """The block's plan, found again if its query layers were replaced (a PEFT adapter added)."""
    plan = _plans.get(block)
    if plan is None or any(block.get_submodule(path) is not m for path, m in plan.queries):
        configs = {id(m.config): m.config for m in block.modules() if hasattr(m, "config")}
        attention_configs = {k: c for k, c in configs.items() if hasattr(c, "_attn_implementation_internal")}
        queries = [
            (name, m)
            for name, m in block.named_modules()
            if name.rsplit(".", 1)[-1] == "q_proj" and isinstance(getattr(m, "out_features", None), int)
        ]
        plan = _plans[block] = _Plan(other_mixer(block), attention_configs, queries)
    return plan


def other_mixer(block: nn.Module) -> str | None:
    """The class name of a sequence mixer in ``block`` that is not attention, or None."""
    for m in block.modules():
        name = type(m).__name__
        if isinstance(m, nn.Conv1d) or any(k in name.lower() for k in _OTHER_MIXERS):
            return name
    return None


def last_position_output(block: nn.Module, args: tuple, kwargs: dict, layer: int = -1) -> torch.Tensor:
    """The block's output at the last position, [b, 1, d], from its arguments over all positions."""
    x = args[0] if args else kwargs["hidden_states"]
    plan = _plan(block)
    if plan.mixer is not None:
        return _general(
            block, args, kwargs, layer, f"it holds {plan.mixer}, a sequence mixer besides attention"
        )
    configs = plan.configs
    try:
        last_args, last_kwargs = _cut_to_last(args, kwargs, x.shape[1], _positional_names(block))
    except _Unsupported as e:
        return _general(block, args, kwargs, layer, str(e))
    _state.originals = {k: c._attn_implementation or "eager" for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation_internal = ATTENTION
        _state.mode, _state.kv = "capture", None
        reason = "it calls no attention through transformers' AttentionInterface"
        if _capture(block, args, kwargs, plan.queries):
            _state.mode = "query"
            try:
                return hidden(block(*last_args, **last_kwargs))
            except _Unsupported as e:
                reason = str(e)
    finally:
        for k, c in configs.items():
            c._attn_implementation_internal = _state.originals[k]
        _state.mode, _state.kv = None, None
    return _general(block, args, kwargs, layer, reason)


def _capture(block: nn.Module, args: tuple, kwargs: dict, queries: list) -> bool:
    """Run ``block`` until its attention call keeps the keys and values (True), or to its end if it
    makes none (False). Queries are left out ([b, s, 0]); a block whose code cannot take that (a
    norm over the whole query projection, say) is run again with zero queries, and remembered."""
    for width in ("none", "zeros") if block not in _full_queries else ("zeros",):
        try:
            with _queries_skipped(queries, width):
                block(*args, **kwargs)
            return False
        except _Captured:
            return True
        except (RuntimeError, ValueError, IndexError):
            if width == "zeros":
                raise
            _full_queries.add(block)
    return False


_full_queries: weakref.WeakSet = weakref.WeakSet()  # blocks whose code needs real-width queries


@contextlib.contextmanager
def _queries_skipped(queries: list[tuple[str, nn.Module]], width: str = "none"):
    """During the capture run, the ``q_proj`` layers return no queries (``width="none"``: [b, s, 0])
    or zeros (``"zeros"``): the queries over every position are never used (attention stops the
    block first), and they cost as much as keys and values, rotary embeddings included."""
    saved = []
    for _, m in queries:
        saved.append((m, m.__dict__.get("forward")))
        out = 0 if width == "none" else getattr(m, "out_features")  # noqa: B009 (an int, checked in _plan)
        m.forward = functools.partial(_zeros, out_features=out)
    try:
        yield
    finally:
        for m, forward in saved:
            if forward is None:
                del m.forward
            else:
                m.forward = forward


def _zeros(x: torch.Tensor, *args, out_features: int, **kwargs) -> torch.Tensor:
    return x.new_zeros(*x.shape[:-1], out_features)


def _general(block, args, kwargs, layer, reason) -> torch.Tensor:
    _log_once(block, layer, reason)
    return hidden(block(*args, **kwargs))[:, -1:]


def _log_once(block: nn.Module, layer: int, reason: str) -> None:
    if reason not in _logged.setdefault(block, set()):
        _logged[block].add(reason)
        log.info("last-token fast path: block %d runs on every position (%s)", layer, reason)


def _positional_names(block: nn.Module) -> list[str]:
    """The names of the block's positional arguments (the first is the hidden states)."""
    if "forward" in block.__dict__:  # patched on the instance (accelerate's hooks): read as it is
        return _signature_names.__wrapped__(block.forward, 1)
    return _signature_names(type(block).forward, 2)  # the class's, read once: [self, hidden, ...]


@functools.lru_cache(maxsize=256)
def _signature_names(forward, skip: int) -> list[str]:
    names = [n for n, p in inspect.signature(forward).parameters.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    return ["hidden_states", *names[skip:]]


def _cut_to_last(args: tuple, kwargs: dict, seq: int, names: list[str]) -> tuple[tuple, dict]:
    """The block's arguments at the last position: hidden states [b, 1, d], position ids, cache
    positions, rotary tables and 4-d attention masks cut to their last query row. ``names``: the
    names of the positional arguments (the first is the hidden states)."""

    def cut(name: str, value):
        if isinstance(value, torch.Tensor):
            if name == "hidden_states":
                return value[:, -1:]
            if name == "attention_mask" and value.dim() == 4 and value.shape[-2] == seq:
                return value[..., -1:, :]
            if name in ("position_ids", "cache_position") and value.shape[-1] == seq:
                return value[..., -1:]
            if seq in value.shape and seq > 1:
                raise _Unsupported(f"argument {name!r} of shape {tuple(value.shape)} is position-shaped")
            return value
        if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
            if all(t.dim() >= 2 and t.shape[-2] == seq for t in value):  # rotary cos/sin [..., s, hd]
                return type(value)(t[..., -1:, :] for t in value)
            return type(value)(cut(name, t) for t in value)
        if isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
            raise _Unsupported(f"argument {name!r} is a dict of tensors")
        return value

    names = [*names, *(f"argument {i}" for i in range(len(names), len(args)))]
    return tuple(cut(n, a) for n, a in zip(names, args, strict=False)), {
        k: cut(k, v) for k, v in kwargs.items()
    }
