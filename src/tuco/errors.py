"""tuco's errors, and the checks that raise them at the boundary (command line and public API).

One family, four kinds; the command line prints the message (never a traceback, unless ``--debug``
or ``TUCO_DEBUG=1``) and exits with the kind's code:

=================  ==========================================================  =========
kind               what                                                         exit code
=================  ==========================================================  =========
``UsageError``     bad options, results that exist, settings that differ          2
``DataError``      bad prompt or results data (``tuco.data``): file and line      2
``ModelError``     a model, adapter or tokenizer that cannot be loaded or paired  1
``RunError``       a failure while running: disk full, out of memory, overflow    1
=================  ==========================================================  =========

Every message names the thing (file and line, argument, model directory and file) and the fix.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence


class TucoError(Exception):
    """Base of tuco's errors; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class UsageError(TucoError):
    """Bad options or a missing input: the message says what to pass instead."""

    exit_code = 2


class SettingsMismatchError(UsageError, ValueError):
    """Results (a file or an experiment directory) made with other settings than this run's."""


class DataError(UsageError, ValueError):
    """Malformed prompt or results data; the message names the file and line and says what to fix."""


class ModelError(TucoError, OSError):
    """A model, adapter or tokenizer that cannot be loaded, or two models that do not pair."""


class RunError(TucoError, RuntimeError):
    """A failure while running (disk full, out of memory at batch size 1, non-finite numbers)."""


# ---------------------------------------------------------------------- library argument checks
SUBLAYERS = ("attn", "mlp")
Alpha = float | Mapping[str, float] | Sequence[float]  # one alpha, one per sublayer kind, or per stage


def check_alpha(alpha, name: str = "alpha") -> float | dict[str, float] | tuple[float, ...]:
    """``alpha`` as a float: a finite real number (not a string, a bool, nan or inf); or one per
    sublayer kind, ``{"attn": a, "mlp": b}`` (a kind left out is 1), as a dict of floats; or one per
    training stage of a chain (``tuco.chain``), ``[a_1, ..., a_K]``, as a tuple of floats. 1.0 where
    every one is 1 (the FT model itself)."""
    if isinstance(alpha, list | tuple):
        if not alpha:
            raise ValueError(f"{name} per stage needs one number per stage of the chain, not an empty list")
        stages = tuple(check_number(a, f"{name}[{i}]") for i, a in enumerate(alpha))
        return 1.0 if all(a == 1.0 for a in stages) else stages
    if isinstance(alpha, Mapping):
        unknown = sorted(set(map(str, alpha)) - set(SUBLAYERS))
        if unknown:
            raise ValueError(f"{name} per sublayer takes the keys attn and mlp, not {', '.join(unknown)}")
        split = {k: check_number(alpha.get(k, 1.0), f"{name}[{k!r}]") for k in SUBLAYERS}
        return 1.0 if all(v == 1.0 for v in split.values()) else split
    return check_number(alpha, name)


def check_number(value, name: str) -> float:
    """``value`` as a float: a finite real number (not a string, a bool, nan or inf)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, not {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def alpha_text(alpha: Alpha) -> str:
    """``0.8``, ``attn=0.5,mlp=1`` for one alpha per sublayer kind, ``[1,0.5]`` for one per stage."""
    if isinstance(alpha, Mapping):
        return ",".join(f"{k}={v:g}" for k, v in alpha.items())
    if isinstance(alpha, list | tuple):
        return "[" + ",".join(f"{v:g}" for v in alpha) + "]"
    return f"{alpha:g}"


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int of at least ``minimum`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return int(value)


def check_choice(value, name: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


# ---------------------------------------------------------------------- argparse types
def _argtype(parse):
    """An argparse ``type=`` from a check: its ValueError/TypeError become argparse's usage error."""
    import argparse

    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the value ")) from None

    convert.__name__ = parse.__name__
    return convert


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number, not {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, not {text!r}") from None


finite_alpha = _argtype(lambda text: check_number(_number(text), "the value"))
positive_int = _argtype(lambda text: check_int(_integer(text), "the value", 1))
nonnegative_int = _argtype(lambda text: check_int(_integer(text), "the value", 0))


def _bounded(low: float, high: float, low_open: bool, what: str):
    def parse(text: str) -> float:
        value = _number(text)
        inside = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not inside:
            raise ValueError(f"must be {what}, not {text}")
        return value

    return _argtype(parse)


positive_float = _bounded(0.0, math.inf, True, "a finite number above 0")
probability = _bounded(0.0, 1.0, True, "in (0, 1]")
