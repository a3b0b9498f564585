"""Text tables that fit the terminal: ``search trials`` (columns dropped by priority, the free text cut to fit,
``--wide`` for every column) and ``search show``'s aligned tables.

The width is the terminal's (``shutil.get_terminal_size``: ``$COLUMNS``, else the terminal, else 80 columns for
output that goes to a file or a pipe).
"""

from __future__ import annotations

import shutil

MIN_FREE_TEXT = 32  # the free-text column (why a trial ended) is cut to fit, down to this many characters


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def _line(cells: list[str], widths: list[int], right: list[bool]) -> str:
    return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()


def fit_table(heads: list[str], rows: list[list[str]], right: list[bool], keep: list[int], width: int | None,
              free_text: int | None = None) -> tuple[list[str], list[str]]:
    """The table's lines and the heads of the columns left out to fit ``width`` (None: no limit).

    ``keep`` orders the column indices from the one to keep longest to the first to leave out; ``free_text`` is
    the index of a column cut (with ``...``) rather than left out, down to ``MIN_FREE_TEXT`` characters."""
    table = [heads] + rows
    widths = [max(len(line[i]) for line in table) for i in range(len(heads))]
    shown = list(range(len(heads)))

    def total(columns: list[int]) -> int:
        cut = {free_text: min(widths[free_text], MIN_FREE_TEXT)} if free_text in columns else {}
        return sum(cut.get(i, widths[i]) for i in columns) + 2 * (len(columns) - 1)

    dropped = []
    if width is not None:
        for index in reversed(keep):
            if total(shown) <= width or len(shown) <= 1:
                break
            if index != free_text and index in shown:
                shown.remove(index)
                dropped.append(heads[index])
        if free_text in shown:  # what is left of the width, for the free text
            others = sum(widths[i] for i in shown if i != free_text) + 2 * (len(shown) - 1)
            widths[free_text] = max(min(widths[free_text], width - others), MIN_FREE_TEXT)
    lines = []
    for line in table:
        cells = [line[i] for i in shown]
        if free_text in shown:
            at = shown.index(free_text)
            limit = widths[free_text]
            if len(cells[at]) > limit:
                cells[at] = cells[at][: limit - 3] + "..."
        lines.append(_line(cells, [widths[i] for i in shown], [right[i] for i in shown]))
    return lines, dropped


def aligned(rows: list[tuple[str, ...]], indent: str = "  ", right: tuple[bool, ...] = ()) -> list[str]:
    """Rows of cells as aligned columns (``right``: which columns are right-aligned, numbers)."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    flags = [i < len(right) and right[i] for i in range(len(widths))]
    return [indent + _line(list(row), widths, flags) for row in rows]
