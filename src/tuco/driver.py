"""The one resumable batch loop: ``tuco score|generate|sweep`` and every experiment step run on it.

    >>> with ResultsFile("results.jsonl", resume=True) as results:
    ...     drive(items, compute, results, is_done=lambda item: results.is_done(item), batch_size=8)

Items are read lazily, a window of ``window`` batches at a time. ``compute(window)`` receives the
whole window (a list of items) and returns result records (dicts with the item's ``id``); it passes
the window to the pair's methods with the real ``batch_size``, so the pair batches it sorted by
length (less padding) and returns results in input order. The window's new records are appended
to the results file at once, in input order, and flushed: an interruption loses at most the window
in flight, and a rerun computes a window whole whenever any of its items is missing, so that it pads
and batches exactly as the uninterrupted run did (identical numbers, identical file).

Also here: out-of-memory splitting (a window that does not fit is computed in halves) and the check
that no result is NaN or infinite (fp16 overflow) before anything is written.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from . import progress
from .errors import RunError

log = logging.getLogger("tuco")
T = TypeVar("T")
WINDOW = 8  # batches per window: what length-sorting may reorder, and the most a kill loses


class NonFiniteError(RunError):
    pass


def drive(
    items: Iterable[T],
    compute: Callable[[list[Any]], list[dict]],
    results: Any,
    is_done: Callable[[T], bool],
    batch_size: int = 8,
    desc: str = "prompts",
    *,
    window: int = WINDOW,
    prepare: Callable[[list[T]], list[Any]] | None = None,
    describe: Callable[[Any], str] = repr,
    total: int | None = None,
    quiet: bool = False,
    rank: int = 0,
    world: int = 1,
) -> int:
    """Compute and append the results of every window of ``items`` not all done yet; the number of
    records written. ``results`` is a ``store.ResultsFile`` (``write``, ``is_done(record)``);
    ``prepare(window)`` may turn items into what ``compute`` takes (and drop invalid ones);
    ``describe(item)`` names an item in errors. Data-parallel runs take windows j with
    ``j % world == rank``."""
    written = 0
    with progress.bar(total, desc, False if quiet else None, dynamic_ncols=True) as bar:
        for j, chunk in enumerate(windows(items, batch_size * window)):
            if j % world == rank and not all(map(is_done, chunk)):
                ready = prepare(chunk) if prepare else chunk
                if ready:
                    with progress.inner():  # this bar counts the prompts: the pair's own stay off
                        computed = _split_on_oom(compute, ready, describe)
                    records = [r for r in computed if not results.is_done(r)]
                    check_finite(records)
                    results.write(records)
                    written += len(records)
            bar.update(len(chunk))
    return written


def windows(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _split_on_oom(compute: Callable, items: list, describe: Callable) -> list[dict]:
    """Run ``compute``; on out-of-memory, split the items in two and retry each half."""
    try:
        return compute(items)
    except torch.OutOfMemoryError:
        if len(items) == 1:
            raise RunError(
                f"Out of memory on a single prompt ({describe(items[0])}): use --max-length with "
                "--truncate, a smaller --dtype (bfloat16), or --device-map auto."
            ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(items) // 2
        log.warning("out of memory on %d prompts: retrying as %d + %d", len(items), half, len(items) - half)
        return _split_on_oom(compute, items[:half], describe) + _split_on_oom(compute, items[half:], describe)


def check_finite(records: list[dict]) -> None:
    """Refuse NaN or infinite scores or probabilities (fp16 overflow) before they are written."""
    for record in records:
        for name in ("tuco", "ptc_norm", "ftc_norm", "outputco", "kl"):
            value = record.get(name)
            if isinstance(value, float) and not math.isfinite(value):
                raise NonFiniteError(
                    f"{name} is {value} for prompt id {record['id']!r}: the model overflowed (fp16?). "
                    "Rerun with --dtype bfloat16 or --dtype float32; the results written so far are kept."
                )
        probs = record.get("probs")
        if probs is None:
            continue
        flat = probs if not probs or not isinstance(probs[0], list) else [p for row in probs for p in row]
        if not all(math.isfinite(p) for p in flat):
            raise NonFiniteError(
                f"non-finite probabilities for prompt id {record['id']!r}: "
                "rerun with --dtype bfloat16 or float32."
            )
