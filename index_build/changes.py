"""Change files for incremental re-indexing.

A change file is JSON Lines, one operation per line (blank lines are skipped)::

    {"op": "upsert", "docid": "d1", "title": "A title", "text": "The passage text."}
    {"op": "delete", "docid": "d2"}

``upsert`` adds a passage or replaces the one with the same docid (``title`` may be omitted
or null); ``delete`` removes one. Operations apply in file order, so for a docid named more
than once the last line wins. Any malformed line (bad JSON, unknown ``op`` or field, missing
or empty docid or text) rejects the whole file with ``<path>:<line>: <what is wrong>``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.errors import ArtifactError, DatasetFormatError
from retrieval.index import check_docid
from retrieval.types import Passage

_FIELDS = {"upsert": {"op", "docid", "title", "text"}, "delete": {"op", "docid"}}


@dataclass
class ChangeSet:
    """The net effect of a change file: passages to (re)insert, in order, and docids to delete."""

    upserts: dict[str, Passage] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    lines: int = 0

    def upsert(self, passage: Passage) -> None:
        self.upserts.pop(passage.docid, None)  # a re-upsert moves to the end: file order
        self.upserts[passage.docid] = passage
        self.deletes.discard(passage.docid)

    def delete(self, docid: str) -> None:
        self.upserts.pop(docid, None)
        self.deletes.add(docid)

    @property
    def touched(self) -> set[str]:
        """Docids whose current passage goes away (replaced or deleted)."""
        return self.deletes | set(self.upserts)


def _string(path: Path, lineno: int, record: dict, name: str, *, optional: bool = False) -> str:
    value = record.get(name)
    if value is None:
        if optional:
            return ""
        raise DatasetFormatError(f"{path}:{lineno}: missing field {name!r}" if name not in record else f"{path}:{lineno}: field {name!r} is null")
    if isinstance(value, int) and not isinstance(value, bool) and name == "docid":
        return str(value)
    if not isinstance(value, str):
        raise DatasetFormatError(f"{path}:{lineno}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def read_changes(path: Path) -> ChangeSet:
    """Parse and validate a whole change file (nothing is applied unless every line is valid)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: change file not found" if not path.exists() else f"{path}: not a regular file")
    opener = gzip.open if path.name.endswith(".gz") else open
    changes = ChangeSet()
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                _apply_line(path, lineno, line, changes)
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    if changes.lines == 0:
        raise DatasetFormatError(f"{path}: change file holds no operations")
    return changes


def _apply_line(path: Path, lineno: int, line: str, changes: ChangeSet) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DatasetFormatError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    op = record.get("op")
    if op not in _FIELDS:
        raise DatasetFormatError(f"{path}:{lineno}: 'op' must be \"upsert\" or \"delete\", got {op!r}")
    unknown = sorted(set(record) - _FIELDS[op])
    if unknown:
        raise DatasetFormatError(f"{path}:{lineno}: unknown field {unknown[0]!r} for a {op} (allowed: {', '.join(sorted(_FIELDS[op]))})")
    docid = _string(path, lineno, record, "docid")
    try:
        check_docid(docid)
    except ArtifactError as exc:
        raise DatasetFormatError(f"{path}:{lineno}: {exc}") from None
    if op == "delete":
        changes.delete(docid)
    else:
        passage = Passage(docid, _string(path, lineno, record, "title", optional=True), _string(path, lineno, record, "text"))
        if not passage.full_text.strip():
            raise DatasetFormatError(f"{path}:{lineno}: upsert of {docid!r} has no text")
        changes.upsert(passage)
    changes.lines += 1
