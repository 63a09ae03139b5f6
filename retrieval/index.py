"""The index artifact: a directory that holds everything needed to search one corpus.

Layout of an index directory::

    manifest.json     IndexManifest (below); written last, so its presence marks a complete build
    index.faiss       the FAISS index; FAISS id == row_id == position in docids.txt
    docids.txt        one external docid per line, in row-id order (UTF-8, no tabs or newlines)
    passages.sqlite   the passage store (see :mod:`retrieval.passage_store`)

Vectors are float32 rows of ``dimension`` components; the metric is inner product (for a
normalising encoder, cosine similarity). Scores returned by search are those inner products.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArtifactError, ArtifactMismatchError
from .passage_store import STORE_FILE, PassageStore, PassageStoreWriter
from .types import Passage

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
DOCIDS_FILE = "docids.txt"
SCHEMA_VERSION = 1


class EncoderRef(BaseModel):
    """Which encoder produced the vectors: where to load it, and the fingerprint it must have."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., description="model directory, or 'builtin:all-MiniLM-L6-v2'")
    fingerprint: str = Field(..., min_length=16, description="EncoderConfig.fingerprint (SHA-256 hex)")


class IndexManifest(BaseModel):
    """Contents of ``manifest.json``.

    ``files`` maps each data file name to its size in bytes, checked on open to catch
    truncated copies. ``build`` is free-form provenance (corpus path, timings, throughput).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    dimension: int = Field(..., gt=0)
    metric: Literal["inner_product"] = "inner_product"
    factory: str = Field(..., description="FAISS index_factory string, e.g. 'Flat' or 'HNSW32'")
    count: int = Field(..., ge=0, description="number of passages == FAISS ntotal")
    encoder: EncoderRef
    created_at: str = Field(..., description="UTC ISO-8601 time the build finished")
    build: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, int] = Field(default_factory=dict)


class IndexWriter:
    """Builds an index directory incrementally: :meth:`add` chunks, then :meth:`finish`.

    Families that need training (IVF, PQ) keep vectors in memory and train on all of them at
    :meth:`finish`; ``Flat`` and ``HNSW`` add as they go.
    """

    def __init__(self, directory: Path, dimension: int, factory: str, encoder: EncoderRef) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise ArtifactError(f"{directory}: index directory is not empty")
        try:
            self._index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ArtifactError(f"invalid FAISS factory string {factory!r}: {str(exc).splitlines()[-1]}") from exc
        self.directory = directory
        self.dimension = dimension
        self.factory = factory
        self.encoder = encoder
        self._store = PassageStoreWriter(directory / STORE_FILE)
        self._docids = (directory / DOCIDS_FILE).open("w", encoding="utf-8")
        self._pending: list[np.ndarray] = []
        self._started = time.monotonic()

    @property
    def count(self) -> int:
        """Passages added so far."""
        return self._store.count

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None:
        """Add passages with their vectors ``[len(passages), dimension]`` float32."""
        if vectors.shape != (len(passages), self.dimension):
            raise ArtifactError(f"vectors of shape {vectors.shape} for {len(passages)} passages of dim {self.dimension}")
        for p in passages:
            if not p.docid or any(c in p.docid for c in "\t\r\n"):
                raise ArtifactError(f"docid {p.docid!r} is empty or contains a tab or newline")
        self._store.add(passages)
        self._docids.writelines(p.docid + "\n" for p in passages)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._index.is_trained:
            self._index.add(vectors)
        else:
            self._pending.append(vectors)

    def finish(self, build: dict[str, Any] | None = None) -> IndexManifest:
        """Train if needed, write every file and the manifest last; returns the manifest."""
        if self._pending:
            data = np.concatenate(self._pending)
            self._index.train(data)
            self._index.add(data)
            self._pending.clear()
        self._store.close()
        self._docids.close()
        if self._index.ntotal != self.count:
            raise ArtifactError(f"index holds {self._index.ntotal} vectors for {self.count} passages")
        faiss.write_index(self._index, str(self.directory / FAISS_FILE))
        elapsed = time.monotonic() - self._started
        manifest = IndexManifest(
            dimension=self.dimension,
            factory=self.factory,
            count=self.count,
            encoder=self.encoder,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            build={"duration_s": round(elapsed, 3), **(build or {})},
            files={name: (self.directory / name).stat().st_size for name in (FAISS_FILE, DOCIDS_FILE, STORE_FILE)},
        )
        tmp = self.directory / (MANIFEST_FILE + ".tmp")
        tmp.write_text(manifest.model_dump_json(indent=2))
        tmp.replace(self.directory / MANIFEST_FILE)
        return manifest


def read_manifest(directory: Path) -> IndexManifest:
    """Parse and validate ``manifest.json`` of an index directory."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: not an index directory (no {MANIFEST_FILE})")
    try:
        return IndexManifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(root)"
        raise ArtifactError(f"{path}: corrupt manifest: {where}: {first['msg']}") from exc


class IndexArtifact:
    """An opened, validated index directory: FAISS index, docids and passage store."""

    def __init__(self, directory: Path, manifest: IndexManifest, index: faiss.Index, docids: list[str], store: PassageStore):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.docids = docids
        self.store = store

    @classmethod
    def open(cls, directory: str | Path) -> "IndexArtifact":
        """Open and validate; any missing, truncated or inconsistent file raises :class:`ArtifactError`."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        for name, size in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise ArtifactError(f"{directory}: {name} is missing")
            if path.stat().st_size != size:
                raise ArtifactError(f"{directory}: {name} is {path.stat().st_size} bytes, manifest says {size} (corrupt copy?)")
        try:
            index = faiss.read_index(str(directory / FAISS_FILE))
        except RuntimeError as exc:
            raise ArtifactError(f"{directory}: {FAISS_FILE} unreadable: {str(exc).splitlines()[-1]}") from exc
        docids = (directory / DOCIDS_FILE).read_text(encoding="utf-8").splitlines()
        store = PassageStore(directory / STORE_FILE)
        problems = []
        if index.d != manifest.dimension:
            problems.append(f"FAISS dimension {index.d} != manifest {manifest.dimension}")
        if index.ntotal != manifest.count:
            problems.append(f"FAISS holds {index.ntotal} vectors, manifest says {manifest.count}")
        if len(docids) != manifest.count:
            problems.append(f"{DOCIDS_FILE} has {len(docids)} lines, manifest says {manifest.count}")
        if store.count != manifest.count:
            problems.append(f"passage store has {store.count} rows, manifest says {manifest.count}")
        if problems:
            store.close()
            raise ArtifactMismatchError(f"{directory}: inconsistent index: " + "; ".join(problems))
        return cls(directory, manifest, index, docids, store)

    def search(self, vectors: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows for ``vectors [n, dimension]``: ``(scores [n, k], row_ids [n, k])``.

        ``k = min(top_k, count)``; a row id of -1 (approximate families) means "no result".
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest.dimension:
            raise ArtifactMismatchError(f"query vectors of shape {vectors.shape} for an index of dimension {self.manifest.dimension}")
        k = max(1, min(top_k, self.manifest.count))
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return scores, rows

    def close(self) -> None:
        self.store.close()

