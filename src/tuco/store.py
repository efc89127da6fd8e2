"""A JSONL results file that survives interruption: written as results arrive, resumable.

    >>> out = ResultsFile("results.jsonl", resume=True, key=("id", "alpha"))
    >>> out.is_done({"id": 3, "alpha": 1.0})      # already written by an earlier, interrupted run?
    >>> out.write([record, ...])                  # appended, flushed and fsynced: never lost

Without ``resume`` or ``overwrite`` an existing file is an error. On resume, the records already
written are kept; a half-written last line (a kill mid-write) is cut off and its record redone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import UsageError

log = logging.getLogger("tuco")


class ResultsExistError(UsageError, FileExistsError):
    pass


def record_key(record: dict, key: tuple[str, ...]) -> str:
    return json.dumps([record.get(k) for k in key], default=str)


class ResultsFile:
    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        key: tuple[str, ...] = ("id",),
    ):
        self.path, self.key = Path(path), key
        self.done: set[str] = set()
        if self.path.exists() and self.path.stat().st_size > 0:
            if resume:
                self._load_for_resume()
            elif overwrite:
                self.path.unlink()
            else:
                raise ResultsExistError(
                    f"{self.path} already exists: pass --resume to continue it or --overwrite to replace it."
                )
        self._file = None  # opened on the first write: a run that fails early leaves no empty file

    def _load_for_resume(self) -> None:
        good_end = 0
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    log.warning(
                        "%s:%d: half-written last line dropped; its record will be redone", self.path, number
                    )
                    break
                try:
                    record = json.loads(raw)
                except json.JSONDecodeError:
                    if f.read(1):  # not the last line: the file is damaged, not just interrupted
                        raise ValueError(
                            f"{self.path}:{number}: unreadable line in the middle of the results; "
                            "fix or remove it, or start again with --overwrite."
                        ) from None
                    log.warning(
                        "%s:%d: unreadable last line dropped; its record will be redone", self.path, number
                    )
                    break
                self.done.add(record_key(record, self.key))
                good_end += len(raw)
        if good_end < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_end)

    def is_done(self, record: dict) -> bool:
        return record_key(record, self.key) in self.done

    def write(self, records: Iterable[dict]) -> None:
        lines = []
        for record in records:
            lines.append(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
            self.done.add(record_key(record, self.key))
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(lines))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return str(value)


def load_results(paths: Iterable[str | Path]):
    """One pandas DataFrame from JSONL, Parquet or CSV results files (a ``source`` column added)."""
    import pandas as pd

    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such results file.")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            with path.open(encoding="utf-8") as f:
                frame = pd.DataFrame([json.loads(line) for line in f if line.strip()])
        frames.append(frame.assign(source=path.name))
    return pd.concat(frames, ignore_index=True)


def convert(path: str | Path, fmt: str) -> Path:
    """Write the JSONL results at ``path`` as ``parquet`` or ``csv`` beside it; returns the new path."""
    frame = load_results([path]).drop(columns="source")
    for column in frame.columns:  # a column of ints and strings (ids): strings, as Parquet needs one type
        kinds = {type(v) for v in frame[column] if v is not None and not isinstance(v, list | dict)}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    out = Path(path).with_suffix("." + fmt)
    if fmt == "parquet":
        frame.to_parquet(out, index=False)
    elif fmt == "csv":  # list columns as JSON text
        frame = frame.apply(lambda col: col.map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v))
        frame.to_csv(out, index=False)
    else:
        raise ValueError(f"unknown results format {fmt!r}: use jsonl, parquet or csv.")
    return out
