"""Markdown tables: cells, escaping and shape checks."""

import pytest

from tuco.tables import cell, markdown_table


def test_a_table_has_a_header_a_rule_and_one_line_per_row():
    lines = markdown_table(["set", "n", "mean TuCo"], [["chat", 32, 0.15523], ["web", 24, None]])
    assert lines == ["| set | n | mean TuCo |", "|---|---|---|", "| chat | 32 | 0.1552 |", "| web | 24 | - |"]
    assert markdown_table(["a"], [[0.5]], floats="{:.0%}")[-1] == "| 50% |"


def test_cells_cannot_break_the_table():
    assert cell("a | b\nc") == "a \\| b c"
    with pytest.raises(ValueError, match="a row of 1 cells under a header of 2"):
        markdown_table(["a", "b"], [["only one"]])
