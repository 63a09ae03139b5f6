"""Stages 2 and 3 of a build (:func:`assemble`; on the milvus backend :func:`assemble_milvus`):
train the FAISS family on a sample if it needs it, add every vector, keep the raw vectors when the
index cannot give them back, run the quality gate (:mod:`index_build.quality`) and write the
index file and the manifest into the staging directory. The build job (:mod:`index_build.build`)
and the re-index job (:mod:`index_build.reindex`) both assemble through here."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError
from retrieval.index import (
    DOCIDS_FILE,
    FAISS_FILE,
    VECTORS_FILE,
    EncoderRef,
    FamilyInfo,
    IndexManifest,
    default_family_params,
    default_search_params,
    describe_index,
    faiss_reason,
    new_faiss_index,
    read_docids,
    set_ef_construction,
    set_index_params,
    utc_now,
    validate_search_params,
    write_faiss_index,
    write_manifest,
)
from retrieval.jsonio import atomic_open
from retrieval.milvus_index import (
    MilvusIndex,
    MilvusRef,
    collection_names,
    drop_collection,
    milvus_index_for,
    milvus_name,
    resolve_uri,
    write_collection,
)
from retrieval.passage_store import PassageStore

from .lexical import build_lexical
from .options import EXACT_GATE_QUERIES, BuildOptions, QualityGateError
from .quality import RECALL_K, SNIPPET_WORDS, GateResult, VectorSource, exact_topk, run_gate, snippet_queries

def default_train_size(info: FamilyInfo, count: int) -> int:
    """Training sample size: ~50 vectors per IVF cell (at least 20k), else 100k; never above the corpus."""
    if info.family == "ivf" and info.nlist:
        wanted = max(50 * info.nlist, 20_000)
    else:
        wanted = 100_000
    return min(count, wanted, 1_000_000)


def gate_snippet_queries(store_path: Path, encoder: DualEncoder, wanted: int, seed: int) -> dict[str, Any]:
    """``query_vectors``/``query_label`` for the gate: snippets of sampled passages, encoded as queries."""
    store = PassageStore(store_path)
    try:
        rows = _gate_sample(store.count, wanted, np.random.default_rng(seed + 1))
        found = store.get_rows(rows)
        passages = [found[r] for r in rows.tolist()]
    finally:
        store.close()
    if not passages:
        return {}
    vectors = encoder.encode_queries(snippet_queries(passages, seed), batch_size=64)  # [n, dim]
    return {"query_vectors": vectors, "query_label": f"query-encoded {SNIPPET_WORDS}-word passage snippets"}


def _gate_sample(count: int, wanted: int, rng: np.random.Generator) -> np.ndarray:
    if count < 2 or wanted < 1:
        return np.empty(0, dtype=np.int64)
    n = min(wanted, max(1, count // 5))
    return rng.choice(count, n, replace=False).astype(np.int64)


def train_and_fill(
    factory: str,
    dimension: int,
    source: VectorSource,
    options: BuildOptions,
    exclude: np.ndarray,
    rng: np.random.Generator,
):
    """A new index of ``factory`` trained on a sample of ``source`` (rows in ``exclude`` held aside) and holding all of it."""
    index = new_faiss_index(dimension, factory)
    info = describe_index(index)
    if options.ef_construction is not None:
        set_ef_construction(index, options.ef_construction)
    train_info: dict[str, Any] = {}
    if not index.is_trained:
        pool = np.setdiff1d(np.arange(source.count, dtype=np.int64), exclude)
        if len(pool) == 0:
            pool = np.arange(source.count, dtype=np.int64)
        n_train = min(options.train_size or default_train_size(info, source.count), len(pool))
        rows = np.sort(rng.choice(pool, n_train, replace=False))
        if info.nlist and n_train < info.nlist:
            raise ArtifactError(
                f"{factory!r} has {info.nlist} IVF cells but only {n_train} training vectors are available; use fewer cells "
                f"(e.g. IVF{max(1, int(4 * np.sqrt(source.count)))} for {source.count} passages)"
            )
        t0 = time.monotonic()
        try:
            index.train(source.take(rows))
        except RuntimeError as exc:
            raise ArtifactError(
                f"training {factory!r} on {n_train} vectors failed: {faiss_reason(exc, 'rejected by FAISS')}"
            ) from exc  # the cause without FAISS's C++ function and source path
        train_info = {"train_vectors": int(n_train), "train_s": round(time.monotonic() - t0, 3)}
    t0 = time.monotonic()
    for _, chunk in source.iter_chunks():
        index.add(chunk)
    train_info["add_s"] = round(time.monotonic() - t0, 3)
    return index, train_info


def write_vectors(source: VectorSource, path: Path) -> None:
    """Write every vector of ``source`` to ``path`` (float32 row-major) atomically, synced to disk."""
    with atomic_open(path, "wb", fsync=True) as handle:
        for _, chunk in source.iter_chunks():
            handle.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())


def quality_gate(
    index,
    info: FamilyInfo,
    source: VectorSource,
    options: BuildOptions,
    query_rows: np.ndarray,
    explicit: dict[str, int],
    defaults: dict[str, int],
) -> tuple[GateResult | None, dict[str, Any] | None]:
    """Run the gate; returns the result and the manifest's ``quality`` (``None`` when there is nothing to measure).

    Raises :class:`QualityGateError` when recall@10 is below ``options.min_recall``.
    """
    if options.query_vectors is not None:
        queries = np.ascontiguousarray(options.query_vectors, dtype=np.float32)[: options.gate_queries]
        self_rows = np.full(len(queries), -1, dtype=np.int64)
        query_source = options.query_label
    else:
        rows = query_rows[:EXACT_GATE_QUERIES] if info.exact else query_rows
        queries = source.take(rows)
        self_rows = rows
        query_source = "held-aside passage vectors"
    if len(queries) == 0 or source.count < 2:
        return None, None
    if info.exact:
        queries, self_rows = queries[:EXACT_GATE_QUERIES], self_rows[:EXACT_GATE_QUERIES]
    truth = exact_topk(source, queries, self_rows, RECALL_K)
    tune = next((name for name in info.params if name not in explicit), None)
    result = run_gate(index, info, truth, source, {**defaults, **explicit}, tune, options.target_recall)
    quality = result.as_manifest(options.min_recall, query_source, info.exact)
    if result.recall < options.min_recall:
        shown = ", ".join(f"{k}={v}" for k, v in result.params.items())
        raise QualityGateError(
            f"quality gate failed: recall@{result.k} {result.recall:.3f} < {options.min_recall} for {options.factory!r}"
            + (f" at {shown}" if shown else "")
            + f" on {result.queries} {query_source}; nothing was published"
        )
    return result, quality


def assemble(
    staging: Path,
    source: VectorSource,
    info: FamilyInfo,
    options: BuildOptions,
    encoder: EncoderRef,
    build: dict[str, Any],
    started: float,
    parent: str | None = None,
) -> IndexManifest:
    """Stages 2 and 3: train, fill, keep vectors, gate, and write ``index.faiss`` and the manifest in ``staging``.

    With ``options.index_backend == "milvus"`` the vectors go into a new collection instead
    (:func:`assemble_milvus`).
    """
    rng = np.random.default_rng(options.seed)
    query_rows = _gate_sample(source.count, options.gate_queries if options.query_vectors is None else 0, rng)
    if options.index_backend == "milvus":
        ref = milvus_ref(staging, options)
        return assemble_milvus(staging, ref, source, info, options, encoder, build, started, query_rows, parent)
    index, train_info = train_and_fill(options.factory, source.dimension, source, options, query_rows, rng)
    store_vectors = (not info.exact) if options.store_vectors is None else options.store_vectors
    if store_vectors:
        write_vectors(source, staging / VECTORS_FILE)
    t0 = time.monotonic()
    params, quality = gated_params(index, info, source, options, query_rows, default_search_params(index))
    set_index_params(index, params)
    write_faiss_index(index, staging / FAISS_FILE)
    return finish_manifest(staging, source, info, options, encoder, params, quality, parent, {**build, **train_info}, t0, started,
                           mmap=options.mmap)


def gated_params(index, info: FamilyInfo, source: VectorSource, options: BuildOptions, query_rows: np.ndarray,
                 defaults: dict[str, int]) -> tuple[dict[str, int], dict[str, Any] | None]:
    """Run the quality gate (:func:`quality_gate`) over ``index``; returns the search parameters the
    version records (tuned by the gate, else the explicit ones over the family's ``defaults``) and
    the manifest's ``quality``."""
    explicit = validate_search_params(info, options.factory, options.search_params)
    result, quality = quality_gate(index, info, source, options, query_rows, explicit, defaults)
    return (result.params if result else {**defaults, **explicit}), quality


def finish_manifest(staging: Path, source: VectorSource, info: FamilyInfo, options: BuildOptions, encoder: EncoderRef,
                    params: dict[str, int], quality: dict[str, Any] | None, parent: str | None, build: dict[str, Any],
                    gate_started: float, started: float, **fields: Any) -> IndexManifest:
    """Build the BM25 side index (``options.lexical``) and write the manifest of an assembled version,
    last; ``fields`` add to or override its fields (a backend, a re-index's parent lexical and fusion)."""
    lexical = build_lexical(staging, options.lexical) if options.lexical is not None else None
    now = time.monotonic()
    values: dict[str, Any] = {
        "dimension": source.dimension,
        "factory": options.factory,
        "family": info.family,
        "count": source.count,
        "encoder": encoder,
        "created_at": utc_now(),
        "search_params": params,
        "quality": quality,
        "parent": parent,
        "lexical": lexical,
        "build": {**build, "gate_s": round(now - gate_started, 3), "duration_s": round(now - started, 3)},
    }
    values.update(fields)
    return write_manifest(staging, IndexManifest(**values))


def milvus_ref(staging: Path, options: BuildOptions) -> MilvusRef:
    """The collection a build in ``staging`` (``<root>/staging/<version>``) writes: ``<prefix>_<version>``."""
    assert options.milvus_uri
    prefix = options.milvus_prefix or milvus_name(f"md2pr_{staging.parent.parent.name}")
    collection, alias = collection_names(prefix, staging.name)
    index_type, index_params = milvus_index_for(options.factory, options.ef_construction)
    return MilvusRef(
        uri=resolve_uri(options.milvus_uri), collection=collection, alias=alias, index_type=index_type, index_params=index_params
    )


def assemble_milvus(
    staging: Path,
    ref: MilvusRef,
    source: VectorSource,
    info: FamilyInfo,
    options: BuildOptions,
    encoder: EncoderRef,
    build: dict[str, Any],
    started: float,
    query_rows: np.ndarray,
    parent: str | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> IndexManifest:
    """Stages 2 and 3 on the milvus backend: keep ``vectors.f32``, fill the version's collection
    (rows = row ids, with their docids), gate it through the Milvus search path, write the manifest
    (``manifest_extra`` overrides its fields: a re-index carries the parent's lexical and fusion).

    A failure after the collection was written (the gate, the BM25 side index) drops the
    collection again, so an unpublished build leaves nothing behind in Milvus.
    """
    write_vectors(source, staging / VECTORS_FILE)  # the exact vectors: the gate and re-indexing read them
    docids = read_docids(staging / DOCIDS_FILE)
    timings = write_collection(ref, source.dimension, source.iter_chunks(), docids)
    try:
        index = MilvusIndex(ref, source.dimension)
        try:
            t0 = time.monotonic()
            params, quality = gated_params(index, info, source, options, query_rows, default_family_params(info))
        finally:
            index.close()
        return finish_manifest(staging, source, info, options, encoder, params, quality, parent, {**build, **timings}, t0, started,
                               **{"backend": "milvus", "milvus": ref, **(manifest_extra or {})})
    except BaseException:
        drop_collection(ref)
        raise
