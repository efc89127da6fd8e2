"""Errors the command line reports as usage errors (exit code 2)."""


class UsageError(Exception):
    """Bad options or a missing input: the message says what to pass instead."""
