"""The README's promises that code can check: its test-vector table and its commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.shardfn import ordinal_for

README = Path(__file__).resolve().parents[2] / "README.md"


def vector_rows() -> list[tuple[str, str, int, int]]:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- vectors:begin -->")[1].split("<!-- vectors:end -->")[0]
    lines = [line for line in table.strip().splitlines() if line.startswith("|")]
    header = lines[0].strip("|").split("|")[1:]
    columns = [re.fullmatch(r"(\w+) N=(\d+)", c.strip()) for c in header]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        key = cells[0].strip("`")
        for match, cell in zip(columns, cells[1:], strict=True):
            assert match is not None
            rows.append((key, match[1], int(match[2]), int(cell)))
    return rows


CASES = [pytest.param(*row, id=f"{row[1]}-N{row[2]}-{row[0]}") for row in vector_rows()]


@pytest.mark.parametrize(("key", "strategy", "count", "ordinal"), CASES)
def test_readme_vector_table(key: str, strategy: str, count: int, ordinal: int) -> None:
    assert ordinal_for(key, strategy, count) == ordinal  # type: ignore[arg-type]


def test_readme_shows_both_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
