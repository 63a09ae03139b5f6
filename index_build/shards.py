"""Resumable, sharded encoding state inside a staging directory.

Layout (inside ``<index-root>/staging/<name>/``)::

    _build/state.json         BuildState: the job's key and every finished shard
    _build/shard-000000.npy   float32 [rows, dimension] vectors of passages 0 .. rows-1
    ../.<name>.lock           held (flock) while a process works on this directory

Shard ``i`` always holds passages ``i * shard_size .. (i + 1) * shard_size - 1`` of the corpus,
and records the SHA-256 of their docids, titles and texts. A shard is written to a temp file
and renamed, then recorded in ``state.json`` (also written via temp file + rename), so after a
``kill -9`` every recorded shard is complete. A rerun of the same command finds this
directory by its key (corpus, encoder fingerprint, encoding settings), re-reads the corpus,
and reuses each shard whose passages hash the same; since shard boundaries and batches are
the same, the vectors and so the index come out identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval.errors import ArtifactError
from retrieval.index import BUILD_DIR
from retrieval.index_versions import STAGING_DIR, lock_staging, unlock_staging
from retrieval.jsonio import atomic_open, write_text_atomic
from retrieval.types import Passage

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"


class ShardRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    rows: int = Field(..., gt=0)
    sha256: str
    first_docid: str
    last_docid: str


class BuildState(BaseModel):
    """``_build/state.json``. ``key`` identifies the job; ``shards`` are the finished ones, in order."""

    model_config = ConfigDict(extra="forbid")

    format: int = 1
    key: dict[str, Any]
    shards: list[ShardRecord] = Field(default_factory=list)
    total: int | None = Field(None, description="passages in the corpus, once it was read to the end")

    @property
    def rows_done(self) -> int:
        return sum(s.rows for s in self.shards)


def passages_digest(passages: Sequence[Passage]) -> str:
    """SHA-256 over the docids, titles and texts of ``passages`` (NUL-separated)."""
    digest = hashlib.sha256()
    for p in passages:
        for part in (p.docid, p.title, p.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class ShardStore:
    """The ``_build`` directory of one staging directory, locked by this process."""

    staging: Path
    state: BuildState
    _lock_handle: Any = None

    @property
    def build_dir(self) -> Path:
        return self.staging / BUILD_DIR

    @classmethod
    def create(cls, staging: Path, key: dict[str, Any]) -> "ShardStore":
        store = cls(staging, BuildState(key=key))
        store.build_dir.mkdir(parents=True, exist_ok=True)
        if not store._try_lock():
            raise ArtifactError(f"{staging}: locked by another build")
        store.save()
        return store

    @classmethod
    def find(cls, index_root: Path, key: dict[str, Any]) -> "ShardStore | None":
        """An unfinished staging directory of the same job, locked for this process; ``None`` if there is none.

        Raises :class:`ArtifactError` when the matching directory is locked by a running build.
        """
        staging_root = Path(index_root) / STAGING_DIR
        if not staging_root.is_dir():
            return None
        for staging in sorted(staging_root.iterdir(), reverse=True):  # newest first
            state_file = staging / BUILD_DIR / STATE_FILE
            if not state_file.is_file():
                continue
            try:
                state = BuildState.model_validate_json(state_file.read_text())
            except (ValidationError, OSError, ValueError):
                logger.warning("ignoring unreadable build state %s", state_file)
                continue
            if state.key != key:
                continue
            store = cls(staging, state)
            if not store._try_lock():
                raise ArtifactError(f"another build of the same corpus and encoder is running in {staging}")
            return store
        return None

    def _try_lock(self) -> bool:
        self._lock_handle = lock_staging(self.staging)
        return self._lock_handle is not None

    def release(self) -> None:
        unlock_staging(self.staging, self._lock_handle)
        self._lock_handle = None

    def save(self) -> None:
        write_text_atomic(self.build_dir / STATE_FILE, self.state.model_dump_json(indent=1), fsync=True)

    def shard_path(self, number: int) -> Path:
        return self.build_dir / f"shard-{number:06d}.npy"

    def reusable(self, number: int, digest: str, dimension: int) -> bool:
        """Whether shard ``number`` is recorded for passages with this digest and its file is intact."""
        if number >= len(self.state.shards):
            return False
        record = self.state.shards[number]
        if record.sha256 != digest:
            return False
        path = self.build_dir / record.file
        try:
            vectors = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        return vectors.shape == (record.rows, dimension) and vectors.dtype == np.float32

    def truncate(self, number: int) -> None:
        """Forget shards ``number`` and later (the corpus differs from there on)."""
        if number < len(self.state.shards):
            logger.info("corpus differs from the recorded shards from shard %d on; re-encoding from there", number)
            for record in self.state.shards[number:]:
                (self.build_dir / record.file).unlink(missing_ok=True)
            del self.state.shards[number:]
            self.state.total = None
            self.save()

    def record(self, number: int, passages: Sequence[Passage], digest: str, vectors: np.ndarray) -> None:
        """Write shard ``number`` (temp file + rename) and record it in the state."""
        assert number == len(self.state.shards), "shards are recorded in order"
        path = self.shard_path(number)
        with atomic_open(path, "wb", fsync=True) as handle:
            np.save(handle, np.ascontiguousarray(vectors, dtype=np.float32))
        self.state.shards.append(
            ShardRecord(file=path.name, rows=len(passages), sha256=digest, first_docid=passages[0].docid, last_docid=passages[-1].docid)
        )
        self.save()

    def finish_reading(self, total: int, shards: int) -> None:
        """The corpus ended after ``shards`` shards holding ``total`` passages."""
        self.truncate(shards)
        self.state.total = total
        self.save()

    def load(self, number: int) -> np.ndarray:
        return np.load(self.build_dir / self.state.shards[number].file, mmap_mode="r")


class ShardVectors:
    """The vectors of all finished shards as one row-ordered source (see :class:`~index_build.quality.VectorSource`)."""

    def __init__(self, shards: ShardStore, dimension: int, chunk_rows: int = 65536) -> None:
        self._shards = shards
        self.dimension = dimension
        self._arrays = [shards.load(i) for i in range(len(shards.state.shards))]
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.count = int(self._starts[-1])
        self._chunk_rows = chunk_rows

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Row-ordered chunks of about ``chunk_rows`` rows (shards are merged, never split)."""
        pending: list[np.ndarray] = []
        start = size = 0
        for offset, array in zip(self._starts, self._arrays):
            if not pending:
                start = int(offset)
            pending.append(np.asarray(array))
            size += len(array)
            if size >= self._chunk_rows:
                yield start, np.concatenate(pending) if len(pending) > 1 else np.ascontiguousarray(pending[0])
                pending, size = [], 0
        if pending:
            yield start, np.concatenate(pending) if len(pending) > 1 else np.ascontiguousarray(pending[0])

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        shard_of = np.searchsorted(self._starts, rows, side="right") - 1
        for shard in np.unique(shard_of).tolist():
            where = shard_of == shard
            out[where] = self._arrays[shard][rows[where] - self._starts[shard]]
        return out
