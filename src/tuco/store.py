"""A JSONL results file that survives interruption: written as results arrive, resumable.

    >>> out = ResultsFile("results.jsonl", resume=True, key=("id", "alpha"))
    >>> out.is_done({"id": 3, "alpha": 1.0})      # already written by an earlier, interrupted run?
    >>> out.write([record, ...])                  # appended, flushed and fsynced: never lost

Without ``resume`` or ``overwrite`` an existing file is an error. On resume, the records already
written are kept; a half-written last line (a kill mid-write) is cut off and its record redone.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .errors import DataError, RunError, SettingsMismatchError, UsageError

log = logging.getLogger("tuco")
NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)


class ResultsExistError(UsageError, FileExistsError):
    pass


def record_key(record: dict, key: tuple[str, ...]) -> str:
    return json.dumps([record.get(k) for k in key], default=str)


def settings_path(path: Path) -> Path:
    """Where the settings of the run that wrote ``path`` are kept (``results.jsonl.settings.json``)."""
    return path.with_name(path.name + ".settings.json")


class OutputLock:
    """An OS lock (``flock``) on ``<path>.lock`` while one run writes ``path``: a second writer is
    refused naming the holder's pid; the lock dies with its process (``kill -9`` included)."""

    def __init__(self, path: Path, lock: Path | None = None):
        self.path = lock or path.with_name(path.name + ".lock")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            self._file = None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            f = self.path.open("a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                f.close()
                raise UsageError(
                    f"{path} is being written by another tuco run (pid {holder}): wait for it to "
                    "finish, or choose another output."
                ) from None
            try:  # the holder before us may have removed the file we locked: lock the new one
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None


class ResultsFile:
    def __init__(
        self,
        path: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        key: tuple[str, ...] = ("id",),
        settings: dict | None = None,
    ):
        self.path, self.key = Path(path), key
        self.settings = None if settings is None else json.loads(json.dumps(settings, default=str))
        self.done: set[str] = set()
        self.first: dict | None = None  # the first record already there (resume)
        self._replace = False  # overwrite: the old file goes when the first new records land
        self._file: TextIO | None = (
            None  # opened on the first write: a run that fails early leaves no empty file
        )
        if resume and overwrite:
            raise UsageError("give --resume or --overwrite, not both")
        if self.path.is_dir():
            raise UsageError(
                f"{self.path} is a directory: give a file path, e.g. {self.path / 'results.jsonl'}"
            )
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise UsageError(f"{self.path}: {self.path.parent} is a file, not a directory")
        self._lock = OutputLock(self.path)
        try:
            if self.path.exists() and self.path.stat().st_size > 0:
                if resume:
                    self._load_for_resume()
                    self._check_settings()
                elif overwrite:
                    self._replace = True
                else:
                    raise ResultsExistError(
                        f"{self.path} already exists: pass --resume to continue it "
                        "or --overwrite to replace it."
                    )
        except BaseException:
            self._lock.release()
            raise

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
                    if not isinstance(record, dict):
                        raise ValueError
                except ValueError:  # JSON or UTF-8 errors
                    if f.read(1):  # not the last line: the file is damaged, not just interrupted
                        raise DataError(
                            f"{self.path}:{number}: unreadable line in the middle of the results; "
                            "fix or remove it, or start again with --overwrite."
                        ) from None
                    log.warning(
                        "%s:%d: unreadable last line dropped; its record will be redone", self.path, number
                    )
                    break
                self.first = self.first or record
                key = record_key(record, self.key)
                if key in self.done:
                    raise DataError(
                        f"{self.path}:{number}: a second record for {key} (two runs wrote this file?): "
                        "remove the repeats, or start again with --overwrite."
                    )
                self.done.add(key)
                good_end += len(raw)
        if good_end < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_end)

    def _check_settings(self) -> None:
        """Refuse to resume results made with other settings (models, options, prompts, command)."""
        if self.settings is None:
            return
        sidecar = settings_path(self.path)
        if sidecar.exists():
            old = json.loads(sidecar.read_text(encoding="utf-8"))
            keys = old.keys() | self.settings.keys()
        else:  # no sidecar (an older tuco, or killed between the first records and it): what records carry,
            # less the dtype: records hold the resolved one, compared once the model has loaded
            old = self.first or {}
            keys = (old.keys() & self.settings.keys()) - {"dtype"}
        self.check_same(old, {k: self.settings.get(k) for k in keys})

    def check_same(self, old: dict, new: dict) -> None:
        """``SettingsMismatchError`` naming every field of ``new`` whose value ``old`` does not share."""
        changed = [f"{k}: {old.get(k)!r:.60} -> {new[k]!r:.60}" for k in sorted(new) if old.get(k) != new[k]]
        if changed:
            raise SettingsMismatchError(
                f"{self.path} holds results made with other settings ({'; '.join(changed)}): rerun with "
                "the same settings to resume, pass --overwrite to replace them, or choose another --out."
            )

    def is_done(self, record: dict) -> bool:
        return record_key(record, self.key) in self.done

    def write(self, records: Iterable[dict]) -> None:
        lines = []
        keys = []
        for record in records:
            try:
                line = json.dumps(record, ensure_ascii=False, default=_jsonable, allow_nan=False)
            except ValueError:  # NaN or infinity: null, which every JSON parser reads (pandas: NaN)
                line = json.dumps(
                    _finite(json.loads(json.dumps(record, default=_jsonable))), ensure_ascii=False
                )
            lines.append(line + "\n")
            keys.append(record_key(record, self.key))
        try:
            if self._file is None:
                self._open("".join(lines))
            else:
                self._file.write("".join(lines))
                self._file.flush()
                os.fsync(self._file.fileno())
        except OSError as e:
            kept = (
                "the results there before are untouched"
                if self._replace
                else (f"the {len(self.done)} records written before are kept")
            )
            cause = "no space left on the device" if e.errno in NO_SPACE else f"cannot write: {e}"
            raise RunError(
                f"{self.path}: {cause}; {kept}. Free space (or fix the cause), then resume "
                "(--resume; an experiment: the same command)."
            ) from e
        self.done.update(keys)

    def _open(self, text: str) -> None:
        """The first write: start the file (or, with overwrite, replace the old one only now that new
        records exist, through a temporary file moved into place), then the settings beside it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._replace:
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                with temporary.open("w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)
            self._replace = False
            self._file = self.path.open("a", encoding="utf-8")
        else:
            self._file = file = self.path.open("a", encoding="utf-8")
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if self.settings is not None:
            write_atomic(settings_path(self.path), json.dumps(self.settings, indent=1) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._lock.release()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never half of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _finite(value):
    """``value`` with every NaN or infinite float (at any depth) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    return str(value)


def load_results(paths: Iterable[str | Path]):
    """One pandas DataFrame from JSONL, Parquet or CSV results files (a ``source`` column added).
    A half-written last line (a run in progress, or killed) is left out with a warning; any other
    unreadable line is a ``DataError`` naming file and line."""
    import pandas as pd

    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such results file.")
        suffix = path.suffix.lower()
        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif suffix == ".csv":
                frame = pd.read_csv(path, encoding="utf-8-sig")
            else:
                frame = pd.DataFrame(_jsonl_records(path))
        except DataError:
            raise
        except (ValueError, OSError, UnicodeDecodeError) as e:  # pandas / pyarrow parse errors
            raise DataError(f"{path}: not a readable {suffix.lstrip('.') or 'results'} file: {e}") from None
        if frame.empty:
            raise DataError(f"{path}: no records in it.")
        frames.append(frame.assign(source=path.name))
    return pd.concat(frames, ignore_index=True)


def _jsonl_records(path: Path) -> list[dict]:
    records: list[dict] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        lines = f.readlines()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: not a JSON object: is this a results file?")
        except ValueError as e:  # JSON or UTF-8 errors
            if number == len(lines) and not raw.endswith(b"\n"):
                log.warning("%s:%d: half-written last line left out (a run in progress?)", path, number)
                continue
            raise DataError(f"{path}:{number}: unreadable line ({e}); fix or remove it.") from None
        if "id" in record:  # one record per prompt (and alpha): a repeat would be counted twice
            key = record_key(record, ("id", "alpha"))
            if key in seen:
                raise DataError(
                    f"{path}:{number}: the same id (and alpha) {key} as line {seen[key]}: two runs wrote "
                    "this file? Remove the repeats."
                )
            seen[key] = number
        records.append(record)
    return records


def convert(path: str | Path, fmt: str) -> Path:
    """Write the JSONL results at ``path`` as ``parquet`` or ``csv`` beside it; returns the new path."""
    frame = load_results([path]).drop(columns="source")
    for column in frame.columns:  # a column of ints and strings (ids): strings, as Parquet needs one type
        kinds = {type(v) for v in frame[column] if v is not None and not isinstance(v, list | dict)}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[column] = frame[column].map(lambda v: None if v is None else str(v))
    out = Path(path).with_suffix("." + fmt)
    if out == Path(path):
        raise UsageError(f"{path}: converting it to {fmt} would replace it; name the results *.jsonl")
    if fmt == "parquet":
        frame.to_parquet(out, index=False)
    elif fmt == "csv":  # list columns as JSON text
        frame = frame.apply(lambda col: col.map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v))
        frame.to_csv(out, index=False)
    else:
        raise ValueError(f"unknown results format {fmt!r}: use jsonl, parquet or csv.")
    return out
