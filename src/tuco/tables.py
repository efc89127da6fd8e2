"""Markdown tables for summaries and experiment reports.

>>> print("\\n".join(markdown_table(["set", "n", "mean TuCo"], [["chat", 32, 0.1552]], floats="{:.3f}")))
| set | n | mean TuCo |
|---|---|---|
| chat | 32 | 0.155 |
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def cell(value, floats: str = "{:.4f}") -> str:
    """One cell: floats through ``floats``, None as "-", "|" escaped, whitespace collapsed."""
    if value is None:
        return "-"
    text = floats.format(value) if isinstance(value, float) else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], floats: str = "{:.4f}") -> list[str]:
    """The lines of a markdown table (no trailing blank line), to splice into a list of lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under a header of {len(header)}: {row!r}")
        lines.append("| " + " | ".join(cell(v, floats) for v in row) + " |")
    return lines
