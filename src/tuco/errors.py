"""The usage-error family: what the command line reports with exit code 2.

Every error a user fixes by changing the command or the input derives from ``UsageError``: bad
options (``UsageError`` itself), bad prompt data (``data.DataError``), results that exist already
(``store.ResultsExistError``), an experiment directory made with other settings
(``experiments.common.SettingsMismatchError``). Runtime failures (loading, incompatible pairs,
overflow, out of memory) are not in it: exit code 1.
"""


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
