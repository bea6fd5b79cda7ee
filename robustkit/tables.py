"""Plain text tables: aligned columns that read the same on a terminal, in a log file and in a pipe."""

from __future__ import annotations

from typing import Any, Sequence


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a table: headers, a rule of dashes, then the rows, each column as wide as its widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    return lines + ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
