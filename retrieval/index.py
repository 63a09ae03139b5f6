"""The index artifact: a directory that holds everything needed to search one corpus.

Layout of an index directory::

    manifest.json     IndexManifest (below); written last, so its presence marks a complete build
    index.faiss       the FAISS index; FAISS id == row_id == position in docids.txt (backend
                      ``faiss``; a ``milvus`` version has none: its vectors live in the Milvus
                      collection the manifest's ``milvus`` names, see :mod:`retrieval.milvus_index`)
    docids.txt        one external docid per line, in row-id order (UTF-8, no tabs or newlines)
    passages.sqlite   the passage store (see :mod:`retrieval.passage_store`)
    vectors.f32       optional: the raw vectors, float32 row-major ``[count, dimension]``; kept
                      for families whose index cannot give the exact vectors back (HNSW, PQ,
                      SQ, IVF), so a later incremental update can rebuild or retrain from them
    ...               any other data file (a side index): the manifest's ``files`` lists every
                      file of the directory, so versioning carries and checks them all

Vectors are float32 rows of ``dimension`` components; the metric is inner product (for a
normalising encoder, cosine similarity). Scores returned by search are those inner products.
Row ids are dense: ``0 .. count-1``, every one a valid position into ``docids.txt``.

Index families are FAISS ``index_factory`` strings (``Flat``, ``HNSW32``, ``HNSW32,SQ8``,
``IVF1024,Flat``, ``IVF1024,PQ16``, ``OPQ16,IVF1024,PQ16``, ...). Approximate families have
search-time parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) whose defaults are recorded
in the manifest and which :meth:`IndexArtifact.search` takes per call (:mod:`retrieval.index_families`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ArtifactError, ArtifactMismatchError
from .index_families import (  # re-exported: the project finds the families here too
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    MAX_EF_SEARCH,
    Family,
    FamilyInfo,
    SearchParamsError,
    default_family_params,
    default_search_params,
    describe_factory,
    describe_index,
    describe_milvus,
    faiss_reason,
    make_search_parameters,
    new_faiss_index,
    set_ef_construction,
    set_index_params,
    validate_search_params,
)
from .jsonio import atomic_path, write_text_atomic
from .milvus_index import MilvusIndex, MilvusRef
from .passage_store import STORE_FILE, PassageStore
from .types import Passage

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
DOCIDS_FILE = "docids.txt"
VECTORS_FILE = "vectors.f32"
SCHEMA_VERSION = 1
#: Entries of an index directory that are never data files (build scratch space, temp files).
BUILD_DIR = "_build"
_TEMP_SUFFIXES = (".tmp",)

class EncoderRef(BaseModel):
    """Which encoder produced the vectors: where to load it, the fingerprint it must have, and the
    backend that ran it (manifests written before backends existed read as ``torch``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., description="model directory, or 'builtin:all-MiniLM-L6-v2'")
    fingerprint: str = Field(..., min_length=16, description="EncoderConfig.fingerprint (SHA-256 hex)")
    backend: str = Field(
        "torch", description="the backend that encoded the passages: torch, onnx or onnx-int8 (retrieval.backends)"
    )


class LexicalRef(BaseModel):
    """The BM25 side index of a version (hybrid and bm25 search modes): a bm25s index in
    ``directory`` (relative to the version directory) over the same passages as the dense
    index, text = title + " " + text, with the tokenisation and parameters in ``config``
    (:class:`retrieval.bm25.BM25Config`)."""

    model_config = ConfigDict(extra="forbid")

    directory: str = "bm25"
    config: dict[str, Any]
    count: int = Field(..., ge=0)


class IndexManifest(BaseModel):
    """Contents of ``manifest.json``.

    ``files`` maps each data file (a path relative to the directory) to its size in bytes,
    checked on open to catch truncated copies. ``build`` is free-form provenance (corpus path,
    timings, throughput). ``search_params`` are the defaults of the family's search-time
    parameters; ``quality`` is the build-time quality gate (recall@k against exact search).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="where the vectors are searched: index.faiss, or the Milvus collection of `milvus`"
    )
    milvus: MilvusRef | None = Field(None, description="backend milvus: URI, collection, alias and index parameters")
    dimension: int = Field(..., gt=0)
    metric: Literal["inner_product"] = "inner_product"
    factory: str = Field(..., description="FAISS index_factory string, e.g. 'Flat' or 'HNSW32'")
    family: str = Field("", description="flat, ivf, hnsw, codes (PQ/SQ without IVF) or other")
    count: int = Field(..., ge=0, description="number of passages == FAISS ntotal")
    encoder: EncoderRef
    query_encoder: EncoderRef | None = Field(
        None,
        description="a query-tower encoder that answers queries over these passage vectors (its pairing.json names "
        "`encoder`'s fingerprint; retrieval.pairing); None = `encoder` encodes the queries too",
    )
    created_at: str = Field(..., description="UTC ISO-8601 time the build finished")
    search_params: dict[str, int] = Field(default_factory=dict, description="defaults: nprobe (IVF), efSearch (HNSW)")
    quality: dict[str, Any] | None = Field(None, description="quality gate: recall_at_k, k, queries, min_recall, ...")
    mmap: bool = Field(False, description="open index.faiss memory-mapped instead of reading it into memory")
    parent: str | None = Field(None, description="version this one was derived from (incremental update)")
    lexical: LexicalRef | None = Field(None, description="BM25 side index; None = dense search only")
    fusion: dict[str, Any] | None = Field(
        None, description="hybrid fusion defaults (retrieval.fusion.FusionConfig); None = its defaults"
    )
    build: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, int] = Field(default_factory=dict)


# ------------------------------------------------------------------------------------- writing


def data_files(directory: Path) -> dict[str, int]:
    """Every data file under ``directory`` (relative POSIX path -> size), manifest and scratch excluded."""
    files: dict[str, int] = {}
    for root, dirs, names in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d != BUILD_DIR]
        dirs.sort()
        for name in sorted(names):
            rel = (rel_root / name).as_posix()
            if rel == MANIFEST_FILE or name.endswith(_TEMP_SUFFIXES) or name.startswith(".lock"):
                continue
            files[rel] = (Path(root) / name).stat().st_size
    return files


def write_manifest(directory: Path, manifest: IndexManifest) -> IndexManifest:
    """Record every data file's size in ``manifest`` and write it last, atomically; returns it."""
    manifest = manifest.model_copy(update={"files": data_files(directory)})
    write_text_atomic(directory / MANIFEST_FILE, manifest.model_dump_json(indent=2), fsync=True)
    return manifest


def write_faiss_index(index: faiss.Index, path: Path) -> None:
    """Write ``index`` to ``path`` atomically, synced (never a half-written index under the real name)."""
    with atomic_path(path, fsync=True) as tmp:
        faiss.write_index(index, str(tmp))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_docid(docid: str) -> None:
    """A docid must be non-empty and hold no tab or line break (docids.txt is line-based)."""
    if not docid or any(c in docid for c in "\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        raise ArtifactError(f"docid {docid!r} is empty or contains a tab or newline")


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


def check_files(directory: Path, manifest: IndexManifest) -> None:
    """Every file the manifest lists exists with its recorded size (else :class:`ArtifactError`)."""
    for name, size in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: {name} is missing")
        if path.stat().st_size != size:
            raise ArtifactError(f"{directory}: {name} is {path.stat().st_size} bytes, manifest says {size} (corrupt copy?)")


def read_docids(path: Path) -> list[str]:
    """Docids of ``docids.txt`` in row order (split on ``\\n`` only)."""
    text = path.read_text(encoding="utf-8")
    if not text:
        return []
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def _mmap_flags(manifest: IndexManifest) -> int:
    """FAISS read flags that memory-map the bulk of an index of this family.

    IVF: the inverted lists (``IO_FLAG_MMAP``); others: the flat codes, including HNSW's
    storage (``IO_FLAG_MMAP_IFC``). FAISS cannot combine the two in one read.
    """
    family = manifest.family
    if not family:
        try:
            family = describe_factory(manifest.dimension, manifest.factory).family
        except ArtifactError:
            family = "other"
    return (faiss.IO_FLAG_MMAP if family == "ivf" else faiss.IO_FLAG_MMAP_IFC) | faiss.IO_FLAG_READ_ONLY


def disable_list_prefetch(index: faiss.Index) -> bool:
    """Turn off FAISS's list prefetch threads on a memory-mapped IVF index; whether there were any.

    ``IO_FLAG_MMAP`` opens IVF lists as ``OnDiskInvertedLists``, whose ``prefetch_nthread``
    (default 32) starts that many threads to page in the probed lists on *every* search. At one
    query per call that costs more than the scan itself (measured at 1M vectors, IVF4096,SQ8 at
    nprobe 16, 1 thread: p50 1.297 ms with prefetch vs 0.362 ms without), and with replicas
    sharing one file through the page cache the lists are already resident: there is nothing to
    prefetch. A page that is not resident is still read on demand by the scan itself.
    """
    lists = on_disk_lists(index)
    if lists is None:
        return False
    lists.prefetch_nthread = 0
    return True


def on_disk_lists(index: faiss.Index) -> "faiss.OnDiskInvertedLists | None":
    """The memory-mapped inverted lists of an IVF index (``None``: not IVF, or its lists are in memory)."""
    ivf = faiss.try_extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists) if ivf is not None else None
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


class IndexArtifact:
    """An opened, validated index directory: the vector index (FAISS, or a Milvus collection), docids and passage store.

    ``index`` is a ``faiss.Index`` (backend ``faiss``) or a :class:`~retrieval.milvus_index.MilvusIndex`
    (backend ``milvus``); :meth:`search` is the one search interface over both.
    """

    def __init__(
        self, directory: Path, manifest: IndexManifest, index: faiss.Index | MilvusIndex, docids: list[str], store: PassageStore
    ):
        self.directory = directory
        self.manifest = manifest
        self.index = index
        self.docids = docids
        self.store = store
        self.milvus = isinstance(index, MilvusIndex)
        self.family = describe_milvus(index.ref.index_type, index.ref.index_params) if isinstance(index, MilvusIndex) else describe_index(index)
        self._defaults = validate_search_params(self.family, manifest.factory, manifest.search_params)
        self._default_params = None if self.milvus else make_search_parameters(index, self._defaults)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], mmap: bool | None = None) -> "IndexArtifact":
        """Open and validate; any missing, truncated or inconsistent file raises :class:`ArtifactError`.

        ``mmap`` (default: the manifest's setting) memory-maps ``index.faiss`` instead of
        reading it: IVF inverted lists and flat codes then stay on disk, paged in on demand.
        A memory-mapped IVF index searches without FAISS's list prefetch threads
        (:func:`disable_list_prefetch`: they cost ~1 ms per search and, with replicas sharing
        the page cache, have nothing to prefetch).
        """
        directory = Path(directory)
        manifest = read_manifest(directory)
        check_files(directory, manifest)
        index: faiss.Index | MilvusIndex
        if manifest.backend == "milvus":
            if manifest.milvus is None:
                raise ArtifactError(f"{directory}: manifest says backend milvus but names no collection")
            if VECTORS_FILE not in manifest.files:
                raise ArtifactError(f"{directory}: a milvus version must keep {VECTORS_FILE} (the exact vectors)")
            index = MilvusIndex(manifest.milvus, manifest.dimension)
        else:
            use_mmap = manifest.mmap if mmap is None else mmap
            flags = _mmap_flags(manifest) if use_mmap else 0
            try:
                index = faiss.read_index(str(directory / FAISS_FILE), flags)
            except RuntimeError as exc:
                raise ArtifactError(f"{directory}: {FAISS_FILE} unreadable: {faiss_reason(exc, 'rejected by FAISS')}") from exc
            if use_mmap:
                disable_list_prefetch(index)
        docids = read_docids(directory / DOCIDS_FILE)
        store = PassageStore(directory / STORE_FILE)
        problems = []
        if index.d != manifest.dimension:
            problems.append(f"FAISS dimension {index.d} != manifest {manifest.dimension}")
        if index.ntotal != manifest.count:
            where = f"Milvus collection {manifest.milvus.collection}" if manifest.milvus else "FAISS"
            problems.append(f"{where} holds {index.ntotal} vectors, manifest says {manifest.count}")
        if len(docids) != manifest.count:
            problems.append(f"{DOCIDS_FILE} has {len(docids)} lines, manifest says {manifest.count}")
        if store.count != manifest.count:
            problems.append(f"passage store has {store.count} rows, manifest says {manifest.count}")
        vectors = directory / VECTORS_FILE
        if VECTORS_FILE in manifest.files and vectors.stat().st_size != manifest.count * manifest.dimension * 4:
            problems.append(f"{VECTORS_FILE} is {vectors.stat().st_size} bytes for {manifest.count} x {manifest.dimension} float32")
        if problems:
            store.close()
            _close_index(index)
            raise ArtifactMismatchError(f"{directory}: inconsistent index: " + "; ".join(problems))
        try:
            return cls(directory, manifest, index, docids, store)
        except ArtifactError:
            store.close()
            _close_index(index)
            raise

    @property
    def search_params(self) -> dict[str, int]:
        """Default search-time parameters (from the manifest)."""
        return dict(self._defaults)

    def search(
        self, vectors: np.ndarray, top_k: int, params: Mapping[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nearest rows for ``vectors [n, dimension]``: ``(scores [n, k], row_ids [n, k])``.

        ``k = min(top_k, count)``; a row id of -1 (approximate families) means "no result".
        ``params`` overrides search-time parameters for this call (``nprobe`` for IVF,
        ``efSearch`` for HNSW; ``None`` = the manifest's defaults); a name the family does not
        support or a value out of range raises :class:`SearchParamsError`.
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.manifest.dimension:
            raise ArtifactMismatchError(f"query vectors of shape {vectors.shape} for an index of dimension {self.manifest.dimension}")
        merged = self._defaults
        if params:
            merged = {**self._defaults, **validate_search_params(self.family, self.manifest.factory, params)}
        k = max(1, min(top_k, self.manifest.count))
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if isinstance(self.index, MilvusIndex):
            return self.index.search(queries, k, merged)
        search_params = make_search_parameters(self.index, merged) if params else self._default_params
        if search_params is None:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=search_params)

    def has_vectors(self) -> bool:
        """Whether the exact vectors can be read back (stored ``vectors.f32`` or a lossless index)."""
        return VECTORS_FILE in self.manifest.files or self.family.reconstructable

    def _vector_reader(self):
        """A callable ``rows -> [len(rows), dimension]`` exact vectors (cached)."""
        reader = getattr(self, "_reader", None)
        if reader is not None:
            return reader
        count, dim = self.manifest.count, self.manifest.dimension
        if VECTORS_FILE in self.manifest.files:
            data = np.memmap(self.directory / VECTORS_FILE, dtype=np.float32, mode="r", shape=(count, dim)) if count else np.empty((0, dim), np.float32)
            reader = lambda rows: np.asarray(data[rows], dtype=np.float32)  # noqa: E731
        elif self.family.reconstructable:
            source = self.index
            if self.family.family == "ivf":
                source = faiss.clone_index(self.index)
                faiss.extract_index_ivf(source).make_direct_map()
            reader = lambda rows: source.reconstruct_batch(np.ascontiguousarray(rows, dtype=np.int64))  # noqa: E731
        else:
            raise ArtifactError(
                f"{self.directory}: {self.manifest.factory} keeps no exact vectors ({VECTORS_FILE} absent); "
                "rebuild it with md2pr-build-index"
            )
        self._reader = reader
        return reader

    def take_vectors(self, rows: np.ndarray) -> np.ndarray:
        """Exact vectors of ``rows``, ``[len(rows), dimension]`` float32 (see :meth:`has_vectors`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return np.empty((0, self.manifest.dimension), dtype=np.float32)
        return self._vector_reader()(rows)

    @property
    def row_of(self) -> dict[str, int]:
        """docid -> row id (the FAISS id), built on first use and kept with the artifact."""
        rows = getattr(self, "_row_of", None)
        if rows is None:
            rows = self._row_of = {d: i for i, d in enumerate(self.docids)}
        return rows

    def inner_products(self, query_vector: np.ndarray, docids: Sequence[str]) -> list[float | None]:
        """Inner products of one query vector ``[dimension]`` with the stored vectors of ``docids``.

        Exact (the vectors read back by :meth:`take_vectors`); a docid that is not in the index
        gets ``None``. A family that keeps no exact vectors raises :class:`ArtifactError`.
        """
        rows = [self.row_of.get(d, -1) for d in docids]
        known = [r for r in rows if r >= 0]
        if not known:
            return [None] * len(docids)
        vectors = self.take_vectors(np.asarray(known, dtype=np.int64))  # [known, dimension]
        values = iter((vectors @ np.asarray(query_vector, dtype=np.float32)).tolist())
        return [next(values) if r >= 0 else None for r in rows]

    def iter_vectors(self, chunk: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """The exact vectors in row order, ``(first_row, [n, dimension] float32)`` chunk by chunk."""
        count = self.manifest.count
        for start in range(0, count, chunk):
            yield start, self.take_vectors(np.arange(start, min(count, start + chunk)))

    def all_vectors(self) -> np.ndarray:
        """Every exact vector in row order, ``[count, dimension]`` float32 (in memory: for small indexes)."""
        chunks = [chunk for _, chunk in self.iter_vectors()]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.manifest.dimension), dtype=np.float32)

    def __enter__(self) -> "IndexArtifact":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()
        _close_index(self.index)


def _close_index(index: faiss.Index | MilvusIndex) -> None:
    """Close a Milvus connection (a FAISS index needs nothing)."""
    if isinstance(index, MilvusIndex):
        index.close()
