"""Progress bars, and the one rule for when they show.

A bar shows on a terminal unless asked otherwise (``progress=True``/``False`` forces it); inside a
run that has its own bar (``tuco.driver.drive``: one bar for the whole input), the bars of the
pair's methods stay off, so a long run shows one bar, not one per batch::

    >>> with progress.inner():                # the driver, around each window it computes
    ...     pair.score(window)                # no second bar
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

_outer_bar = contextvars.ContextVar("tuco_outer_bar", default=False)


def bar(total: int | None, desc: str, progress: bool | None = None, **options: Any) -> tqdm:
    """A tqdm bar over ``total`` prompts: shown when ``progress`` is True, hidden when False; None
    shows it on a terminal, and never inside ``inner()``."""
    disable = (True if _outer_bar.get() else None) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="prompt", disable=disable, **options)


@contextlib.contextmanager
def inner() -> Iterator[None]:
    """Inside it, bars with ``progress=None`` stay hidden: an outer bar counts the work (the driver),
    or nothing should draw on the terminal (``tuco serve``'s model thread)."""
    token = _outer_bar.set(True)
    try:
        yield
    finally:
        _outer_bar.reset(token)
