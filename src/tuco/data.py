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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataError
from .inputs import chat_problem

PROMPT_FIELDS = ("prompt", "messages", "text")


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

    A bad record raises ``DataError``, or, with ``on_error``, is passed to it and skipped. A source
    without a single valid record is a ``DataError`` too (an empty file, or every record invalid).
    """
    seen: set = set()
    bad = 0
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
            bad += 1
            continue
        seen.add(key)
        yield record
    if not seen:
        name = "stdin" if source == "-" else source
        raise DataError(
            f"{name}: all {bad} records are invalid (see the warnings above): nothing to do."
            if bad
            else f"{name}: no prompts: the input is empty or holds only blank lines."
        )


def count_records(
    source: str, *, field: str | None = None, fmt: str | None = None, on_error=None
) -> int | None:
    """How many valid records a prompt file holds, reading and checking every one (so that bad data
    is refused before a model loads; ``read_prompts`` raises as it would). None for stdin."""
    if source == "-":
        return None
    return sum(1 for _ in read_prompts(source, field=field, fmt=fmt, on_error=on_error))


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
    if path.is_dir():
        raise DataError(f"{source}: is a directory, not a prompt file.")
    if not path.is_file():
        raise DataError(f"{source}: no such prompt file.")
    fmt = fmt or {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(
        path.suffix.lower(), "text"
    )
    readers = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows, "text": _text_rows}
    if fmt not in readers:
        raise DataError(f"unknown input format {fmt!r}; use one of {', '.join(readers)}.")
    return readers[fmt](path)


def text_lines(raw_lines: Iterable[bytes], name: str) -> Iterator[str]:
    """Lines of UTF-8 text (line ends kept) from raw bytes; a byte-order mark is dropped, and bytes
    that are not UTF-8 raise ``DataError`` naming the file, the line and the column."""
    for number, raw in enumerate(raw_lines, 1):
        if number == 1:
            if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                raise DataError(
                    f"{name}: UTF-16 text; tuco reads UTF-8: convert it "
                    f"(iconv -f UTF-16 -t UTF-8 {name} > converted) and pass the converted file."
                )
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            column = len(raw[: e.start].decode("utf-8", errors="replace")) + 1
            raise DataError(
                f"{name}:{number}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); convert the "
                f"file to UTF-8, e.g. iconv -f latin1 -t UTF-8 {name} > converted (if it is Latin-1)."
            ) from None


def _stdin_rows(fmt: str | None) -> Iterator[tuple[str, Any]]:
    try:
        if sys.stdin is None or sys.stdin.closed:
            raise ValueError
        buffer = getattr(sys.stdin, "buffer", None)  # bytes, so that bad UTF-8 is reported by line
        lines = text_lines(buffer, "<stdin>") if buffer is not None else iter(sys.stdin)
        first = next(lines, "").removeprefix("\ufeff")
    except (OSError, ValueError):
        raise DataError(
            "--prompts -: stdin is closed: pipe the prompts in (... | tuco score --prompts -) "
            "or pass --prompts FILE."
        ) from None
    if fmt is None:
        fmt = "jsonl" if first.lstrip().startswith("{") else "text"
    if fmt not in ("jsonl", "text"):
        raise DataError(f"stdin can carry jsonl or text prompts, not {fmt!r}.")

    def all_lines():
        yield first
        yield from lines

    yield from (_parse_jsonl if fmt == "jsonl" else _parse_text)(all_lines(), "<stdin>")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        yield from _parse_jsonl(text_lines(f, str(path)), str(path))


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
    with path.open("rb") as f:
        yield from _parse_text(text_lines(f, str(path)), str(path))


def _parse_text(lines, name: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield f"{name}:{number}", {"prompt": text}


def _csv_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        reader = csv.reader(text_lines(f, str(path)))
        header = None
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank lines, before the header or between rows
            if header is None:
                header = [cell.strip() for cell in row]
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) > len(header):
                yield (
                    where,
                    DataError(
                        f"{where}: {len(row)} fields but the header (line 1) names {len(header)}; "
                        "quote fields that hold commas."
                    ),
                )
            else:
                yield where, dict(zip(header, row, strict=False))


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield f"{path}[row {index}]", row
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path}: not a readable Parquet file ({e}); pass --input-format if it is another format."
        ) from None


def _record(row: dict, index: int, where: str, field: str | None) -> PromptItem:
    names = (field,) if field else PROMPT_FIELDS
    name = next((n for n in names if n in row), None)
    if name is None:
        wanted = f"'{field}'" if field else "one of 'prompt', 'messages', 'text' (or --field NAME)"
        raise DataError(
            f"{where}: no prompt field: expected {wanted}; "
            f"fields found: {', '.join(map(str, row)) or 'none'}."
        )
    prompt = row[name]
    if isinstance(prompt, str) and name == "messages":
        try:
            prompt = json.loads(prompt)  # chats stored as JSON strings (CSV)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: field 'messages' is not a JSON list of messages.") from e
    if isinstance(prompt, list):
        problem = chat_problem(prompt)
        if problem:
            raise DataError(f"{where}: field {name!r}: {problem}")
        empty = not any(m["content"].strip() for m in prompt)
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
