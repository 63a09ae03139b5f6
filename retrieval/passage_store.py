"""SQLite passage store: passage text by row id or docid without loading the corpus into memory.

Schema (``passages.sqlite``)::

    passages(row_id INTEGER PRIMARY KEY,   -- the FAISS id, 0..count-1, dense
             docid  TEXT NOT NULL UNIQUE,  -- the external id
             title  TEXT NOT NULL,         -- may be ''
             text   TEXT NOT NULL)

A store is written once by :class:`PassageStoreWriter` and then only read: readers open it
read-only and immutable, so it is safe to share between threads and processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .errors import ArtifactError
from .types import Passage

STORE_FILE = "passages.sqlite"


def _uri(path: Path, query: str) -> str:
    """An SQLite URI for ``path`` (special characters escaped) with ``query`` options."""
    return f"file:{quote(str(Path(path).resolve()))}?{query}"


class PassageStoreWriter:
    """Appends passages with consecutive row ids; commit with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            raise ArtifactError(f"{path}: passage store already exists")
        self._conn = sqlite3.connect(_uri(path, "mode=rwc"), uri=True)
        self.path = path
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute(
            "CREATE TABLE passages (row_id INTEGER PRIMARY KEY, docid TEXT NOT NULL UNIQUE,"
            " title TEXT NOT NULL, text TEXT NOT NULL)"
        )
        self.count = 0

    def add(self, passages: Sequence[Passage]) -> None:
        """Store ``passages`` under row ids ``count .. count + len - 1``; a repeated docid is an error."""
        rows = [(self.count + i, p.docid, p.title, p.text) for i, p in enumerate(passages)]
        try:
            self._conn.executemany("INSERT INTO passages VALUES (?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as exc:
            raise ArtifactError(f"duplicate docid in corpus: {exc}") from exc
        self.count += len(rows)

    def copy_rows(self, source: Path, old_rows: np.ndarray) -> None:
        """Append the passages of store ``source`` at rows ``old_rows`` (in that order) under the next row ids.

        Used by incremental updates: a new version gets the kept passages of the old one
        without their text passing through Python.
        """
        old_rows = np.asarray(old_rows, dtype=np.int64)
        if not len(old_rows):
            return
        self._conn.commit()
        self._conn.execute("ATTACH DATABASE ? AS source", (_uri(source, "mode=ro&immutable=1"),))
        try:
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS row_map (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
            self._conn.execute("DELETE FROM row_map")
            new_rows = range(self.count, self.count + len(old_rows))
            self._conn.executemany("INSERT INTO row_map VALUES (?, ?)", zip(old_rows.tolist(), new_rows))
            copied = self._conn.execute(
                "INSERT INTO passages SELECT m.new, p.docid, p.title, p.text"
                " FROM row_map m JOIN source.passages p ON p.row_id = m.old ORDER BY m.new"
            ).rowcount
            self._conn.execute("DELETE FROM row_map")
            self._conn.commit()
        except sqlite3.IntegrityError as exc:
            raise ArtifactError(f"duplicate docid while copying passages from {source}: {exc}") from exc
        finally:
            self._conn.rollback()
            self._conn.execute("DETACH DATABASE source")
        if copied != len(old_rows):
            raise ArtifactError(f"{source}: {len(old_rows) - copied} of the requested rows are missing from the passage store")
        self.count += copied

    def close(self) -> None:
        """Commit and close; the file is complete afterwards."""
        self._conn.commit()
        self._conn.close()


class PassageStore:
    """Read-only access to a finished store."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ArtifactError(f"{path}: passage store missing")
        try:
            self._conn = sqlite3.connect(_uri(path, "mode=ro&immutable=1"), uri=True, check_same_thread=False)
            (self.count,) = self._conn.execute("SELECT COUNT(*) FROM passages").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ArtifactError(f"{path}: passage store unreadable: {exc}") from exc
        self.path = path

    def docids(self) -> list[str]:
        """All docids in row-id order."""
        return [d for (d,) in self._conn.execute("SELECT docid FROM passages ORDER BY row_id")]

    def get_rows(self, row_ids: Iterable[int]) -> dict[int, Passage]:
        """Passages for the given row ids (ids not in the store are absent from the result)."""
        ids = sorted(set(int(i) for i in row_ids))
        out: dict[int, Passage] = {}
        for start in range(0, len(ids), 500):  # SQLite caps bound parameters per statement
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, docid, title, text in self._conn.execute(
                f"SELECT row_id, docid, title, text FROM passages WHERE row_id IN ({marks})", chunk
            ):
                out[row_id] = Passage(docid, title, text)
        return out

    def get(self, docid: str) -> Passage | None:
        """The passage with external id ``docid``, or ``None``."""
        row = self._conn.execute("SELECT docid, title, text FROM passages WHERE docid = ?", (docid,)).fetchone()
        return Passage(*row) if row else None

    def close(self) -> None:
        self._conn.close()
