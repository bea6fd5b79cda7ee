"""Plain text tables: aligned columns that read the same on a terminal, in a log file and in a pipe."""

from __future__ import annotations

import textwrap
from typing import Any, Collection, Sequence

#: The narrowest a wrapped column gets, however little room the others leave.
MIN_WRAPPED = 12


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None,
               wrap: Collection[int] = ()) -> list[str]:
    """The lines of a table: headers, a rule of dashes, then the rows, each column as wide as its widest cell.

    :param width: with ``wrap``, the widest a line may be: the columns numbered in ``wrap`` (long texts such
        as descriptions) share what the other columns leave and their cells wrap onto continuation lines
        (other columns blank there). Lines stay within ``width`` unless the unwrapped columns alone exceed it.
    """
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    wrapped = sorted((i for i in set(wrap) if 0 <= i < len(widths)), key=lambda i: widths[i])
    if width is not None and wrapped:
        room = width - sum(w for i, w in enumerate(widths) if i not in wrapped) - 2 * (len(widths) - 1)
        for k, i in enumerate(wrapped):  # the narrowest take what they need, the rest share what is left
            share = room // (len(wrapped) - k)
            widths[i] = max(min(widths[i], share), min(MIN_WRAPPED, widths[i]), len(str(headers[i])))
            room -= widths[i]

    def lines_of(row: Sequence[Any]) -> list[str]:
        cells = [textwrap.wrap(str(c), widths[i], break_on_hyphens=False) or [""] if i in wrapped else [str(c)]
                 for i, c in enumerate(row)]
        return ["  ".join((cell[n] if n < len(cell) else "").ljust(w) for cell, w in zip(cells, widths)).rstrip()
                for n in range(max(len(cell) for cell in cells))]

    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    return lines + [line for row in rows for line in lines_of(row)]
