"""What every experiment shares: chats, resumable steps, and the output directory's files.

    >>> out = RunDirectory("runs/e5", settings={"pair": "llama2-7b", "max_shots": 32})
    >>> records = out.step("scores", items, compute, batch_size=8)   # resumes where it stopped
    >>> out.finish(records, table, {"plot": fig})   # results.jsonl, table.md, plot.png

An output directory remembers the settings it was made with (``settings.json``): rerunning the same
command resumes every step from its ``steps/<step>.jsonl`` (finished records are never recomputed),
and rerunning with other settings is refused unless ``overwrite`` (``--overwrite``) clears ``steps/``
(nothing else in the directory is deleted).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from ..driver import drive
from ..errors import SettingsMismatchError, UsageError
from ..inputs import as_chat
from ..plots import png
from ..store import OutputLock, ResultsFile, write_atomic


def as_prompt(pair, text: str, system: str | None = None) -> str | list[dict]:
    """A chat (``inputs.as_chat``) when the pair can format one (a paper pair's prompt string, or
    the tokenizer's chat template), else raw text."""
    return as_chat(text, system) if pair.formats_chats else text


class RunDirectory:
    """An experiment's output directory: its settings, resumable steps and final files.

    Holds a lock on the directory (``.lock``: a second run on it is refused) until ``close`` (or the
    end of a ``with`` block). Nothing in it changes until the first step starts: a run that fails
    before (a typo in a model, bad data) leaves an earlier run's files as they were, even with
    ``overwrite``."""

    def __init__(self, directory: str | Path, settings: dict, overwrite: bool = False):
        self.dir = Path(directory)
        self.settings = json.loads(json.dumps(settings, default=str))  # as it will read back
        self.overwrite, self._started = overwrite, False
        if self.dir.exists() and not self.dir.is_dir():
            raise UsageError(f"{self.dir} is a file: --out of an experiment is a directory")
        self._lock = OutputLock(self.dir, self.dir / ".lock")
        path = self.dir / "settings.json"
        if path.exists() and not overwrite:
            old = json.loads(path.read_text())
            if old != self.settings:
                keys = old.keys() | self.settings.keys()
                changed = sorted(k for k in keys if old.get(k) != self.settings.get(k))
                self.close()
                raise SettingsMismatchError(
                    f"{self.dir} holds a run with other settings ({', '.join(changed)}): "
                    "pass --overwrite to replace it, or choose another --out."
                )

    def start(self) -> None:
        """The run has started: with ``overwrite`` clear ``steps/`` (only what RunDirectory wrote; a
        GCG cache stays), and record the settings. Called by the first ``step`` or ``finish``."""
        if self._started:
            return
        if self.overwrite and (self.dir / "steps").is_dir():
            shutil.rmtree(self.dir / "steps")
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "settings.json", json.dumps(self.settings, indent=1) + "\n")
        self._started = True

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def step(
        self,
        name: str,
        items: Sequence[dict],
        compute: Callable[[list[dict]], list[dict]],
        batch_size: int = 8,
        desc: str | None = None,
    ) -> list[dict]:
        """Records of ``compute`` for every item (each a dict with a unique ``id``), in item order.

        ``compute(window)`` returns one record per item of a window (``tuco.driver``: up to WINDOW
        batches, which it passes to the pair with ``batch_size``), with the item's ``id``; records are
        appended to ``steps/<name>.jsonl`` window by window, so a rerun computes only the windows not
        yet done, and whole, exactly as the first run did."""
        self.start()
        path = self.dir / "steps" / f"{name}.jsonl"

        def checked(window: list[dict]) -> list[dict]:
            records = compute(window)
            if [r["id"] for r in records] != [item["id"] for item in window]:
                raise RuntimeError(f"step {name!r}: compute returned records for other items")
            return records

        with ResultsFile(path, resume=True) as results:
            drive(items, checked, results, results.is_done, batch_size, desc or name, total=len(items))
        with path.open(encoding="utf-8") as f:
            done = {r["id"]: r for r in map(json.loads, f)}
        return [done[item["id"]] for item in items]

    def finish(
        self, records: list[dict], table: str, figures: dict | None = None, metrics: dict | None = None
    ) -> str:
        """Write ``results.jsonl`` (the per-prompt records), ``table.md``, ``<name>.png`` and
        ``metrics.json`` (the headline numbers under plain keys; NaN is written as null)."""
        self.start()
        with ResultsFile(self.dir / "results.jsonl", overwrite=True) as results:
            results.write(records)
        (self.dir / "table.md").write_text(table)
        clean = json.loads(json.dumps(metrics or {}, default=str), parse_constant=lambda _: None)
        (self.dir / "metrics.json").write_text(json.dumps(clean, indent=1, allow_nan=False) + "\n")
        for name, fig in (figures or {}).items():
            (self.dir / f"{name}.png").write_bytes(png(fig))
        return table


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
