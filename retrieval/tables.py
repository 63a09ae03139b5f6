"""Markdown tables: the one helper every report, renderer and CLI table goes through.

A table is a header, rows of cells (anything; ``str()`` is applied, ``None`` is a blank cell) and
an alignment per column (``"l"`` or ``"r"``; default all left, written ``|---|``). Cells are not
padded unless asked: ``benchmarks/RESULTS.md`` and the reports are diffed in review, and padding
to the widest cell (as ``tabulate`` always does) would turn a changed figure into a change of
every line of its table. ``pad=True`` (the CLIs' terminal tables) pads to aligned columns. A ``|``
inside a cell is escaped (``\\|``) so it cannot split the row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _text(cell: object) -> str:
    return "" if cell is None else str(cell).replace("|", "\\|")


def markdown_table(
    header: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None, *, pad: bool = False
) -> list[str]:
    """The lines of a markdown table: header, rule, one line per row.

    ``align``: one letter per column, ``l`` (left) or ``r`` (right), e.g. ``"lrr"``; default all
    ``l``. Every row must have as many cells as the header.
    """
    head = [_text(h) for h in header]
    body = [[_text(c) for c in row] for row in rows]
    align = align or "l" * len(head)
    if len(align) != len(head) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} does not give l or r for each of {len(head)} columns")
    for row in body:
        if len(row) != len(head):
            raise ValueError(f"a row of {len(row)} cells for {len(head)} columns: {row}")
    if not pad:
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
        return ["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(row) + " |" for row in body)]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a == "r" else "-" * (w + 2) for w, a in zip(widths, align)) + "|"
    return [line(head), rule, *(line(row) for row in body)]
