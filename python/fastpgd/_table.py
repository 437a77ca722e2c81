"""The plain-text table of every report: :meth:`fastpgd.Timers.report` and ``fastpgd bench``."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None
) -> str:
    """Lay out rows of cells as a text table.

    Each column is as wide as its widest cell; the first column (names) is
    left-aligned and the others (numbers) right-aligned, and a rule of dashes
    separates the header from the rows. Trailing spaces are stripped.

    Args:
        header (Sequence[str]): the column names.
        rows (Sequence[Sequence[str]]): the cells, each row as long as ``header``.
        title (str, optional): a line above the table. Default: none.

    Returns:
        str: the table's lines joined by newlines, without a final newline.

    Examples::

        >>> print(format_table(["name", "ms"], [["step", "12.5"], ["attack", "9.0"]]))
        name      ms
        ------  ----
        step    12.5
        attack   9.0
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"rows[{i}] has {len(row)} cells, header has {len(header)}")
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    lines = [] if title is None else [title]
    lines.append(line(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line(row) for row in rows)
    return "\n".join(lines)
