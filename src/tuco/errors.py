"""Errors the command line reports as usage errors (exit code 2)."""


class UsageError(Exception):
    """Bad options or a missing input: the message says what to pass instead."""


def finite_alpha(text: str) -> float:
    """argparse type of ``--alpha``: a finite number (nan and inf are refused with exit code 2)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"alpha must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"alpha must be a finite number, not {text!r}")
    return value
