"""Plain data types shared by readers, retrievers and evaluation.

- ``Qrels``: ``{query_id: {docid: relevance}}``, relevance an int (graded: 0 = not relevant).
- ``Run``: ``{query_id: {docid: score}}``, higher score = better; ranks are derived by sorting.
- ``Queries``: ``{query_id: query text}`` in file order.
"""

from __future__ import annotations

from dataclasses import dataclass

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
Queries = dict[str, str]


@dataclass(frozen=True, slots=True)
class Passage:
    """One corpus entry. ``docid`` is the external id; ``title`` may be empty."""

    docid: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """The text every encoder and BM25 index sees: title and body joined by a space.

        This is the single definition of "passage text" for training, indexing and search.
        """
        return f"{self.title} {self.text}".strip() if self.title else self.text
