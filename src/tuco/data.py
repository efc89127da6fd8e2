"""Prompt files in, one ``PromptItem`` at a time (read lazily: a file need not fit in memory).

Formats, by extension or ``fmt``: JSONL (``.jsonl``, ``.json``), CSV (``.csv``), Parquet
(``.parquet``), plain text (anything else: one prompt per non-empty line), ``-`` for stdin (JSONL
if its first line starts with ``{``, else text), and Hugging Face datasets (``read_dataset``).

A JSONL/CSV/Parquet row holds its prompt in ``prompt``, ``messages`` (a chat: list of
``{"role", "content"}``) or ``text`` (or the field named by ``field``), an optional ``id`` (default:
the record's 0-based position) and any other fields (``group``, ``label``, ``answer``...), which are
carried to the results. Bad rows raise ``DataError`` naming file and line.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

PROMPT_FIELDS = ("prompt", "messages", "text")


class DataError(UsageError, ValueError):
    """A prompt source is malformed; the message names the file and line and says what to fix."""


@dataclass
class PromptItem:
    id: Any
    prompt: str | list[dict]
    fields: dict = field(default_factory=dict)
    where: str = ""


def read_prompts(
    source: str,
    *,
    field: str | None = None,
    fmt: str | None = None,
    on_error: Callable[[DataError], None] | None = None,
) -> Iterator[PromptItem]:
    """Records of a prompt file (or ``-`` for stdin), in file order, validated one by one.

    A bad record raises ``DataError``, or, with ``on_error``, is passed to it and skipped.
    """
    seen: set = set()
    for index, (where, row) in enumerate(_rows(source, fmt)):
        try:
            if isinstance(row, DataError):
                raise row
            record = _record(row, index, where, field)
            key = json.dumps(record.id, default=str)
            if key in seen:
                raise DataError(f"{where}: duplicate id {record.id!r}; every prompt needs a unique id.")
        except DataError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        seen.add(key)
        yield record


def count_records(source: str) -> int | None:
    """How many records a prompt file holds (for a progress bar's ETA); None when unknown (stdin)."""
    path = Path(source)
    if source == "-" or not path.is_file():
        return None
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - 1 if path.suffix.lower() == ".csv" else lines


def read_dataset(name: str, split: str, field: str | None = None) -> Iterator[PromptItem]:
    """Records of a Hugging Face dataset (hub id, or a directory saved with ``save_to_disk``)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError("--dataset needs the datasets package: pip install 'tuco[datasets]'") from e
    try:
        if Path(name).is_dir():
            data = datasets.load_from_disk(name)
            data = data[split] if isinstance(data, datasets.DatasetDict) else data
        else:
            data = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many kinds of errors when offline
        raise DataError(
            f"Could not load dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. Offline or no "
            "hub access? Export the prompts to a local file elsewhere and pass --prompts FILE "
            "(JSONL, CSV, Parquet or text)."
        ) from e
    for index, row in enumerate(data):
        yield _record(dict(row), index, f"{name}[{split}][{index}]", field)


def _rows(source: str, fmt: str | None) -> Iterator[tuple[str, Any]]:
    if source == "-":
        return _stdin_rows(fmt)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{source}: no such prompt file.")
    fmt = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(
        path.suffix.lower(), "text"
    )
    readers = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows, "text": _text_rows}
    if fmt not in readers:
        raise DataError(f"unknown input format {fmt!r}; use one of {', '.join(readers)}.")
    return readers[fmt](path)


def _stdin_rows(fmt: str | None) -> Iterator[tuple[str, Any]]:
    lines = iter(sys.stdin)
    first = next(lines, "")
    if fmt is None:
        fmt = "jsonl" if first.lstrip().startswith("{") else "text"
    if fmt not in ("jsonl", "text"):
        raise DataError(f"stdin can carry jsonl or text prompts, not {fmt!r}.")

    def all_lines():
        yield first
        yield from lines

    yield from (_parse_jsonl if fmt == "jsonl" else _parse_text)(all_lines(), "<stdin>")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        yield from _parse_jsonl(f, str(path))


def _parse_jsonl(lines, name: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            row = DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno}).")
        if not isinstance(row, dict | DataError):
            row = DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}.")
        yield where, row


def _text_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        yield from _parse_text(f, str(path))


def _parse_text(lines, name: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield f"{name}:{number}", {"prompt": text}


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}[row {index}]", row
            index += 1


def _record(row: dict, index: int, where: str, field: str | None) -> PromptItem:
    names = (field,) if field else PROMPT_FIELDS
    name = next((n for n in names if n in row), None)
    if name is None:
        wanted = f"'{field}'" if field else "one of 'prompt', 'messages', 'text' (or --field NAME)"
        raise DataError(
            f"{where}: no prompt field: expected {wanted}; fields found: {', '.join(row) or 'none'}."
        )
    prompt = row[name]
    if isinstance(prompt, str) and name == "messages":
        try:
            prompt = json.loads(prompt)  # chats stored as JSON strings (CSV)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: field 'messages' is not a JSON list of messages.") from e
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt):
            raise DataError(
                f'{where}: field {name!r} must be a non-empty list of {{"role", "content"}} messages.'
            )
        empty = not any(str(m["content"]).strip() for m in prompt)
    elif isinstance(prompt, str):
        empty = not prompt.strip()
    else:
        raise DataError(
            f"{where}: field {name!r} must be a string or a list of messages, not {type(prompt).__name__}."
        )
    if empty:
        raise DataError(f"{where}: empty prompt; remove it, or pass --skip-invalid to skip such records.")
    fields = {k: v for k, v in row.items() if k not in (name, "id")}
    return PromptItem(id=row.get("id", index), prompt=prompt, fields=fields, where=where)


def item_choices(record: PromptItem, default: list[str] | None) -> list[str]:
    """The answer choices of a multiple-choice item: its ``choices`` field (a list, or "A|B|C"),
    else ``default``."""
    options = record.fields.get("choices", default)
    if isinstance(options, str):
        options = [c.strip() for c in options.split("|")]
    if not options or len(options) < 2:
        raise DataError(f"{record.where}: no answer choices: give --choices A B ... or a 'choices' field.")
    return [str(c) for c in options]


def item_answer(record: PromptItem, options: list[str]) -> str | None:
    """The right choice of an item: its ``answer`` field, a choice or an index into the choices
    (None when it has none)."""
    answer = record.fields.get("answer")
    if answer is None or answer == "":
        return None
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return options[answer]  # an index into the choices
    if str(answer).strip() in options:
        return str(answer).strip()
    raise DataError(f"{record.where}: answer {answer!r} is not one of the choices {options}.")
