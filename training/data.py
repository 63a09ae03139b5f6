"""The training file: hard negatives mined per query, optionally annotated with teacher scores.

One JSONL file. Line 1 is the header (:class:`TrainingHeader`), every other line one query
(:class:`TrainingRecord`)::

    {"format": "md2pr-training", "version": 1, "dataset": "../shared/data/scifact", "split": "train",
     "depth": 30, "relevance_level": 1, "sources": {"bm25": {...BM25Config}, "dense": {"index": ..., "encoder": ...,
     "fingerprint": ...}}, "teacher": null}
    {"query_id": "0", "query": "0-dimensional biomaterials ...",
     "positives": [{"docid": "31715818", "relevance": 1, "sources": {"bm25": 1}, "scores": {"bm25": 21.3, "dense": 0.64}}],
     "negatives": [{"docid": "1020", "relevance": 0, "sources": {"bm25": 2, "dense": 5}, "scores": {"bm25": 19.0, "dense": 0.61}}, ...]}

- ``positives``: every judged docid of the query graded at least the header's ``relevance_level``
  (default 1) and present in the corpus, retrieved or not.
- ``negatives``: the union of each source's top ``depth`` (BM25 and/or a dense index), labelled
  positives excluded, duplicates merged, ordered by best rank. A docid judged 0 may appear
  (it is a true negative); one judged between 0 and ``relevance_level`` never does. A query
  without judgements (an unlabelled query, mined for distillation) has no positives.
- ``sources``: ``{source: 1-based rank}`` for each source whose top ``depth`` held the docid
  (empty for a positive that no source found).
- ``scores``: each source's *exact* score of the docid (BM25, 0 without a shared term; dense:
  inner product with the indexed vector), whether or not it was in that source's top ``depth``;
  the fused teacher uses them. ``null`` where the source could not score it.
- After annotation (``md2pr-annotate``) each candidate also has ``cross_encoder_score`` and
  ``teacher_score`` (the value distillation uses, :func:`retrieval.cross_encoder.teacher_scores`),
  and the header's ``teacher`` describes the teacher (source, fingerprint, fusion weights, and
  where attention maps were cached, if they were).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval.jsonio import atomic_open

from .errors import TrainingFileError

FORMAT = "md2pr-training"


class Candidate(BaseModel):
    """One (query, passage) candidate of a record."""

    model_config = ConfigDict(extra="forbid")

    docid: str = Field(min_length=1)
    relevance: int = 0
    sources: dict[str, int] = Field(default_factory=dict)
    scores: dict[str, float | None] = Field(default_factory=dict)
    cross_encoder_score: float | None = None
    teacher_score: float | None = None

    @property
    def best_rank(self) -> int | None:
        """The best (lowest) rank any source gave it, ``None`` if no source retrieved it."""
        return min(self.sources.values()) if self.sources else None


class TrainingRecord(BaseModel):
    """One query with its positives and mined negatives (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    positives: list[Candidate]
    negatives: list[Candidate]

    def candidates(self) -> list[Candidate]:
        """Positives then negatives."""
        return [*self.positives, *self.negatives]


class TrainingHeader(BaseModel):
    """Line 1 of a training file."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["md2pr-training"] = FORMAT
    version: Literal[1] = 1
    dataset: str
    split: str
    depth: int = Field(gt=0)
    relevance_level: int = Field(1, ge=1)  # lowest judged grade among the positives
    sources: dict[str, dict[str, Any]]
    teacher: dict[str, Any] | None = None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def read_training_file(path: str | os.PathLike[str]) -> tuple[TrainingHeader, Iterator[TrainingRecord]]:
    """Read the header now and return it with a lazy iterator over the records.

    Any malformed line raises :class:`TrainingFileError` as ``<path>:<line>: <what>``; query
    ids must be unique and no docid may be both a positive and a negative of one query.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingFileError(f"{path}: training file not found")
    handle = path.open(encoding="utf-8")
    first = handle.readline()
    try:
        header = TrainingHeader.model_validate_json(first)
    except ValidationError as exc:
        handle.close()
        if not first.strip():
            raise TrainingFileError(f"{path}:1: empty file (expected the md2pr-training header)") from None
        raise TrainingFileError(f"{path}:1: not an md2pr-training header: {_first_error(exc)}") from None

    def records() -> Iterator[TrainingRecord]:
        seen: set[str] = set()
        with handle:
            for lineno, line in enumerate(handle, start=2):
                if not line.strip():
                    continue
                try:
                    record = TrainingRecord.model_validate_json(line)
                except ValidationError as exc:
                    raise TrainingFileError(f"{path}:{lineno}: invalid record: {_first_error(exc)}") from None
                if record.query_id in seen:
                    raise TrainingFileError(f"{path}:{lineno}: duplicate query id {record.query_id!r}")
                seen.add(record.query_id)
                both = {c.docid for c in record.positives} & {c.docid for c in record.negatives}
                if both:
                    raise TrainingFileError(f"{path}:{lineno}: docid {min(both)!r} is both positive and negative")
                yield record

    return header, records()


def load_training_file(path: str | os.PathLike[str]) -> tuple[TrainingHeader, list[TrainingRecord]]:
    """:func:`read_training_file`, all records in memory."""
    header, records = read_training_file(path)
    return header, list(records)


def header_line(header: TrainingHeader) -> str:
    return header.model_dump_json() + "\n"


def record_line(record: TrainingRecord) -> str:
    return record.model_dump_json(exclude_none=False) + "\n"


def write_training_file(path: str | os.PathLike[str], header: TrainingHeader, records: Iterable[TrainingRecord]) -> int:
    """Write a whole file atomically (:func:`retrieval.jsonio.atomic_open`); returns the record count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_open(path) as out:
        out.write(header_line(header))
        for record in records:
            out.write(record_line(record))
            count += 1
    return count
