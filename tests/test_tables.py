"""retrieval.tables.markdown_table: the one table helper of reports, renderers and CLIs."""

from __future__ import annotations

import pytest

from retrieval.tables import markdown_table


def test_unpadded_table_with_alignment_blanks_and_escaped_pipes() -> None:
    lines = markdown_table(["system", "nDCG@10", "note"], [["bm25", "0.6569", None], ["a|b", 0.5, "x"]], "lrl")
    assert lines == [
        "| system | nDCG@10 | note |",
        "|---|---:|---|",
        "| bm25 | 0.6569 |  |",
        "| a\\|b | 0.5 | x |",
    ]


def test_padded_table_aligns_columns() -> None:
    lines = markdown_table(["system", "nDCG@10"], [["bm25", "0.6569"], ["dense-long", "1.0000"]], "lr", pad=True)
    assert lines == [
        "| system     | nDCG@10 |",
        "|------------|--------:|",
        "| bm25       |  0.6569 |",
        "| dense-long |  1.0000 |",
    ]


@pytest.mark.parametrize("rows, align", [([["one"]], "ll"), ([["one", "two", "three"]], None), ([["a", "b"]], "lx")])
def test_a_row_or_alignment_of_the_wrong_width_is_refused(rows: list[list[str]], align: str | None) -> None:
    with pytest.raises(ValueError):
        markdown_table(["h1", "h2"], rows, align)
