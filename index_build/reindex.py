"""Incremental re-indexing: apply a change file to the served version, producing a new version.

The current version is only read. The new version holds the current passages minus the
deleted and replaced docids (in their old order), then the upserted passages (in change-file
order); row ids stay dense positions into ``docids.txt``. How the FAISS index follows:

- **Flat, PQ/SQ without IVF** (``removable``): ``remove_ids`` (which compacts ids), then ``add``.
- **IVF families** (also with OPQ): ``remove_ids``, then every remaining id in the inverted
  lists is renumbered to its compacted row, then ``add``; the trained quantizers are reused.
- **HNSW and others** (no ``remove_ids``): the trained index is emptied and rebuilt from the
  exact vectors (``vectors.f32`` or the index's own flat storage); never a pretend delete.

The vectors are encoded by the encoder the manifest names, on the backend it records
(``encoder.backend``), and a different encoder or backend is refused: either means a full
rebuild (``md2pr-build-index --encoder`` / ``--backend``). The quality
gate runs on the new index with the version's search parameters, and ``CURRENT`` moves only
if it still names the version the update started from.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError, ArtifactMismatchError
from retrieval.index import (
    DOCIDS_FILE,
    FAISS_FILE,
    VECTORS_FILE,
    IndexArtifact,
    IndexManifest,
    set_index_params,
    utc_now,
    write_faiss_index,
    write_manifest,
)
from retrieval.index_versions import VERSIONS_DIR, current_version, lock_staging, new_staging_dir, publish, unlock_staging
from retrieval.milvus_index import collection_names, drop_collection
from retrieval.passage_store import STORE_FILE, PassageStoreWriter
from retrieval.types import Passage

from .assemble import _gate_sample, assemble_milvus, gate_snippet_queries, quality_gate, write_vectors
from .changes import ChangeSet
from .encoding import PassageEncoder
from .engines import EncodingEngine, encode_texts
from .lexical import LEXICAL_DIR, rebuild_lexical
from .options import DEFAULT_GATE_QUERIES, DEFAULT_MIN_RECALL, DEFAULT_SHARD_SIZE, BuildOptions, BuildResult

logger = logging.getLogger(__name__)

#: Files of an index directory the update writes itself.
CORE_FILES = {FAISS_FILE, DOCIDS_FILE, STORE_FILE, VECTORS_FILE}


@dataclass(frozen=True)
class SideIndexUpdate:
    """What a side-index updater gets: the old version, the new staging directory, and the row mapping.

    New row ``i < len(kept_rows)`` is old row ``kept_rows[i]``; rows after that are ``added``.
    """

    old: IndexArtifact
    staging: Path
    kept_rows: np.ndarray
    added: list[Passage]


#: Updaters for extra files in a version directory, by top-level name (a file or a directory
#: such as ``bm25/``). A side index without an updater is not carried into the new version
#: (it would describe the old passages); a warning says so and the manifest records it.
def _update_lexical(update: SideIndexUpdate) -> None:
    rebuild_lexical(update.old.manifest.lexical, update.staging)


SIDE_INDEX_UPDATERS: dict[str, Callable[[SideIndexUpdate], None]] = {LEXICAL_DIR: _update_lexical}


@dataclass(frozen=True)
class ReindexOptions:
    batch_size: int = 32
    min_recall: float = DEFAULT_MIN_RECALL
    gate_queries: int = DEFAULT_GATE_QUERIES
    keep: int | None = None
    publish: bool = True
    seed: int = 0
    #: Passages per shard sent to a non-local engine (``engine`` of :func:`apply_changes`).
    shard_size: int = DEFAULT_SHARD_SIZE


class UpdatedVectors:
    """Exact vectors of the new version: kept old rows, then the new ones (a ``VectorSource``)."""

    def __init__(self, old: IndexArtifact, kept_rows: np.ndarray, added: np.ndarray, chunk_rows: int = 65536) -> None:
        self._old = old
        self._kept = kept_rows
        self._added = added
        self.dimension = old.manifest.dimension
        self.count = len(kept_rows) + len(added)
        self._chunk = chunk_rows

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(self._kept), self._chunk):
            yield start, self._old.take_vectors(self._kept[start : start + self._chunk])
        for start in range(0, len(self._added), self._chunk):
            yield len(self._kept) + start, self._added[start : start + self._chunk]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        old = rows < len(self._kept)
        if old.any():
            out[old] = self._old.take_vectors(self._kept[rows[old]])
        if (~old).any():
            out[~old] = self._added[rows[~old] - len(self._kept)]
        return out


def load_matching_encoder(manifest: IndexManifest, encoder_path: str | None = None) -> DualEncoder:
    """The encoder the manifest names (optionally loaded from elsewhere) on the backend that built
    the version; refuses a different one."""
    encoder = DualEncoder.from_pretrained(encoder_path or manifest.encoder.source, backend=manifest.encoder.backend)
    check_same_encoder(manifest, encoder)
    return encoder


def check_same_encoder(manifest: IndexManifest, encoder: DualEncoder) -> None:
    """Refuse an encoder (or a backend) other than the one that encoded the version's passages."""
    if encoder.fingerprint != manifest.encoder.fingerprint:
        raise ArtifactMismatchError(
            f"the index was built by encoder {manifest.encoder.fingerprint[:12]} ({manifest.encoder.source}) but "
            f"{encoder.source} is {encoder.fingerprint[:12]}; refusing to mix encoders in one index "
            "(a new encoder needs a full rebuild: md2pr-build-index --encoder)"
        )
    if encoder.backend.name != manifest.encoder.backend:
        raise ArtifactMismatchError(
            f"the index's passages were encoded on backend {manifest.encoder.backend!r}, this encoder runs on "
            f"{encoder.backend.name!r}; refusing to mix backends in one index "
            "(another backend needs a full rebuild: md2pr-build-index --backend)"
        )


def _remap_ivf_ids(index: faiss.Index, new_row: np.ndarray) -> None:
    """Renumber every id stored in the IVF inverted lists through ``new_row`` (old id -> new id)."""
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        pointer = invlists.get_ids(list_no)
        ids = faiss.rev_swig_ptr(pointer, size)  # a writable view of the list's id storage
        ids[:] = new_row[ids]
        invlists.release_ids(list_no, pointer)
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.make_direct_map(False)


def updated_index(old: IndexArtifact, keep: np.ndarray, source: UpdatedVectors, added: np.ndarray) -> tuple[faiss.Index, str]:
    """The FAISS index of the new version and how it was made (``remove_ids`` or ``rebuild``)."""
    index = faiss.read_index(str(old.directory / FAISS_FILE))  # a private, writable, in-memory copy
    removed = np.nonzero(~keep)[0].astype(np.int64)
    info = old.family
    if info.removable:
        if len(removed):
            n = index.remove_ids(faiss.IDSelectorBatch(removed))
            if n != len(removed):
                raise ArtifactError(f"{old.directory}: removed {n} of {len(removed)} vectors (index out of step with docids)")
            if info.family == "ivf":
                new_row = np.full(len(keep), -1, dtype=np.int64)
                new_row[keep] = np.arange(int(keep.sum()), dtype=np.int64)
                _remap_ivf_ids(index, new_row)
        if len(added):
            index.add(np.ascontiguousarray(added, dtype=np.float32))
        return index, "remove_ids"
    if not old.has_vectors():
        raise ArtifactError(
            f"{old.directory}: {old.manifest.factory} cannot remove vectors and keeps no exact vectors to rebuild from; "
            "rebuild the index with md2pr-build-index"
        )
    index.reset()  # keeps what was trained (SQ/PQ), drops vectors and graph
    for _, chunk in source.iter_chunks():
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index, "rebuild"


def apply_changes(
    index_root: Path,
    changes: ChangeSet,
    encoder: DualEncoder | None = None,
    encoder_path: str | None = None,
    options: ReindexOptions | None = None,
    change_label: str = "",
    engine: EncodingEngine | None = None,
) -> BuildResult:
    """Apply ``changes`` to the version ``CURRENT`` names; returns the new (published) version.

    ``engine`` encodes the upserted passages (:mod:`index_build.engines`; default: this process).
    """
    options = options or ReindexOptions()
    index_root = Path(index_root)
    parent = current_version(index_root)
    if parent is None:
        raise ArtifactError(f"{index_root}: nothing is published to update (build one with md2pr-build-index)")
    old = IndexArtifact.open(index_root / VERSIONS_DIR / parent, mmap=False)
    try:
        if encoder is None:
            encoder = load_matching_encoder(old.manifest, encoder_path)
        else:
            check_same_encoder(old.manifest, encoder)
        return _apply(index_root, parent, old, changes, encoder, options, change_label, engine)
    finally:
        old.close()


@dataclass
class _Plan:
    """What one update does: rows kept from the old version and passages (with vectors) added."""

    parent: str
    old: IndexArtifact
    changes: ChangeSet
    keep: np.ndarray  # [old count] bool
    kept_rows: np.ndarray  # [kept] old row ids, ascending
    added: list[Passage]
    vectors: np.ndarray  # [len(added), dim]
    replaced: int
    missing: list[str]
    encode_s: float
    encoder: DualEncoder | None = None  # for the gate's snippet queries
    engine: str = "local"

    @property
    def deleted(self) -> int:
        return len(self.changes.deletes) - len(self.missing)


def _plan(
    parent: str, old: IndexArtifact, changes: ChangeSet, encoder: DualEncoder, options: ReindexOptions, engine: EncodingEngine | None
) -> _Plan:
    row_of = {docid: row for row, docid in enumerate(old.docids)}
    missing = sorted(d for d in changes.deletes if d not in row_of)
    if missing:
        logger.warning("%d deleted docids are not in version %s (ignored), e.g. %r", len(missing), parent, missing[0])
    keep = np.ones(old.manifest.count, dtype=bool)
    keep[[row_of[d] for d in changes.touched if d in row_of]] = False
    added = list(changes.upserts.values())
    t0 = time.monotonic()
    texts = [p.full_text for p in added]
    if engine is None:
        vectors = PassageEncoder(encoder, options.batch_size).encode(texts)  # [len(added), dim]
    else:
        vectors = encode_texts(engine, texts, options.shard_size, encoder.dimension)
    return _Plan(
        parent, old, changes, keep, np.nonzero(keep)[0].astype(np.int64), added, vectors,
        replaced=sum(1 for p in added if p.docid in row_of), missing=missing, encode_s=time.monotonic() - t0, encoder=encoder,
        engine=engine.name if engine is not None else "local",
    )


def _apply(
    index_root: Path,
    parent: str,
    old: IndexArtifact,
    changes: ChangeSet,
    encoder: DualEncoder,
    options: ReindexOptions,
    label: str,
    engine: EncodingEngine | None = None,
) -> BuildResult:
    started = time.monotonic()
    plan = _plan(parent, old, changes, encoder, options, engine)
    staging = new_staging_dir(index_root)
    lock = lock_staging(staging)
    try:
        try:
            manifest = _write_version(staging, plan, options, label, started)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not options.publish:
            return BuildResult(staging.name, staging, manifest, published=False)
        try:
            version = publish(index_root, staging, keep=options.keep, expect_current=parent)
        except ArtifactError:
            shutil.rmtree(staging, ignore_errors=True)
            if manifest.milvus is not None:
                drop_collection(manifest.milvus)  # its version was never published
            raise
    finally:
        unlock_staging(staging, lock)
    logger.info(
        "published %s from %s: +%d upserted (%d replaced), -%d deleted, %d passages (%s)",
        version, parent, len(plan.added), plan.replaced, plan.deleted, manifest.count, manifest.build["index_update"],
    )
    return BuildResult(version, index_root / VERSIONS_DIR / version, manifest)


def _write_version(staging: Path, plan: _Plan, options: ReindexOptions, label: str, started: float) -> IndexManifest:
    """Write every file of the new version into ``staging``, gate it, and write its manifest."""
    old = plan.old
    store = PassageStoreWriter(staging / STORE_FILE)
    try:
        store.copy_rows(old.store.path, plan.kept_rows)
        store.add(plan.added)
    finally:
        store.close()
    with (staging / DOCIDS_FILE).open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(old.docids[row] + "\n" for row in plan.kept_rows.tolist())
        handle.writelines(p.docid + "\n" for p in plan.added)
    source = UpdatedVectors(old, plan.kept_rows, plan.vectors)
    build = {
        "kind": "incremental",
        "changes": label,
        "operations": plan.changes.lines,
        "upserts": len(plan.added),
        "replaced": plan.replaced,
        "deleted": plan.deleted,
        "missing_deletes": len(plan.missing),
        "encode_s": round(plan.encode_s, 3),
        "engine": plan.engine,
    }
    if old.milvus:
        return _write_milvus_version(staging, plan, options, source, build, started)
    index, method = updated_index(old, plan.keep, source, plan.vectors)
    if index.ntotal != source.count:
        raise ArtifactError(f"updated index holds {index.ntotal} vectors for {source.count} passages")
    if VECTORS_FILE in old.manifest.files:
        write_vectors(source, staging / VECTORS_FILE)
    dropped = _side_indexes(old, staging, plan.kept_rows, plan.added)
    quality = None
    if old.has_vectors():
        gate_options, query_rows = _gate_setup(staging, plan, options, source)
        _, quality = quality_gate(index, old.family, source, gate_options, query_rows, old.search_params, old.search_params)
    else:
        logger.warning("no exact vectors in %s: the quality gate cannot run for this update", old.directory)
    set_index_params(index, old.search_params)
    write_faiss_index(index, staging / FAISS_FILE)
    manifest = IndexManifest(
        dimension=old.manifest.dimension,
        factory=old.manifest.factory,
        family=old.manifest.family or old.family.family,
        count=source.count,
        encoder=old.manifest.encoder,
        created_at=utc_now(),
        search_params=old.search_params,
        quality=quality,
        mmap=old.manifest.mmap,
        parent=plan.parent,
        lexical=_carried_lexical(old, source.count, dropped),
        fusion=old.manifest.fusion,
        build={
            **build,
            "index_update": method,
            "duration_s": round(time.monotonic() - started, 3),
            **({"dropped_files": dropped} if dropped else {}),
        },
    )
    return write_manifest(staging, manifest)


def _carried_lexical(old: IndexArtifact, count: int, dropped: list[str]):
    """The old version's BM25 reference for the new one (``None`` when it was not carried)."""
    if old.manifest.lexical and LEXICAL_DIR not in dropped:
        return old.manifest.lexical.model_copy(update={"count": count})
    return None


def _gate_setup(staging: Path, plan: _Plan, options: ReindexOptions, source: UpdatedVectors) -> tuple[BuildOptions, np.ndarray]:
    """The gate's options (the version's search parameters, the same snippet queries a full build uses) and held-aside rows."""
    old = plan.old
    gate_options = BuildOptions(
        factory=old.manifest.factory, min_recall=options.min_recall, gate_queries=options.gate_queries,
        search_params=old.search_params, seed=options.seed, lexical=None,
    )
    if plan.encoder is not None and options.gate_queries > 0:
        snippets = gate_snippet_queries(staging / STORE_FILE, plan.encoder, options.gate_queries, options.seed)
        gate_options = replace(gate_options, **snippets)
    query_rows = _gate_sample(source.count, options.gate_queries if gate_options.query_vectors is None else 0,
                              np.random.default_rng(options.seed))
    return gate_options, query_rows


def _write_milvus_version(
    staging: Path, plan: _Plan, options: ReindexOptions, source: UpdatedVectors, build: dict, started: float
) -> IndexManifest:
    """A Milvus version's update: a new collection (``<prefix>_<new version>``) filled from the kept and new vectors."""
    old = plan.old
    ref = old.manifest.milvus
    assert ref is not None
    prefix = ref.alias.removesuffix("_current")
    collection, _ = collection_names(prefix, staging.name)
    new_ref = ref.model_copy(update={"collection": collection})
    dropped = _side_indexes(old, staging, plan.kept_rows, plan.added)
    gate_options, query_rows = _gate_setup(staging, plan, options, source)
    extra = {"lexical": _carried_lexical(old, source.count, dropped), "fusion": old.manifest.fusion}
    record = {**build, "index_update": "new collection", **({"dropped_files": dropped} if dropped else {})}
    return assemble_milvus(
        staging, new_ref, source, old.family, gate_options, old.manifest.encoder, record, started, query_rows,
        parent=plan.parent, manifest_extra=extra,
    )


def _side_indexes(old: IndexArtifact, staging: Path, kept_rows: np.ndarray, added: list[Passage]) -> list[str]:
    """Run the registered updater of each side index of the old version; returns the names not carried."""
    names = sorted({name.split("/", 1)[0] for name in old.manifest.files} - CORE_FILES)
    dropped = []
    for name in names:
        updater = SIDE_INDEX_UPDATERS.get(name)
        if updater is None:
            logger.warning("side index %s of %s has no updater and is not carried into the new version", name, old.directory)
            dropped.append(name)
            continue
        updater(SideIndexUpdate(old, staging, kept_rows, added))
    return dropped
