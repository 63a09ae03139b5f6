"""Encode a corpus with a dual encoder into a new, validated, published index version.

The job, in order:

1. **Stream and encode in shards** (:mod:`index_build.shards`): the corpus is read once,
   ``shard_size`` passages at a time (never all text in memory); each shard's vectors are
   written as a float32 ``.npy`` and recorded, so a killed job resumes from its finished
   shards. The passage store and ``docids.txt`` are written along the way.
2. **Assemble** (:func:`assemble`): train the FAISS family on a sample if it needs it, add
   every shard, keep the raw vectors when the index cannot give them back.
3. **Quality gate** (:mod:`index_build.quality`): recall@10 against exact search on held-aside
   vectors, with ``nprobe``/``efSearch`` defaults tuned to a target unless given; below
   ``min_recall`` the build fails and nothing is published.
4. **Publish** (:func:`retrieval.index_versions.publish`): the staged directory becomes a
   version and ``CURRENT`` switches atomically; older versions beyond ``keep`` are pruned.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.bm25 import BM25Config
from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError, DatasetFormatError
from retrieval.index import (
    BUILD_DIR,
    DOCIDS_FILE,
    FAISS_FILE,
    VECTORS_FILE,
    EncoderRef,
    FamilyInfo,
    IndexManifest,
    check_docid,
    default_family_params,
    default_search_params,
    describe_index,
    describe_milvus,
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
from retrieval.index_versions import TRASH_DIR, VERSIONS_DIR, new_staging_dir, publish
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
from retrieval.passage_store import STORE_FILE, PassageStore, PassageStoreWriter
from retrieval.types import Passage

from .encoding import PassageEncoder
from .engines import EncodingEngine, LocalEngine
from .lexical import build_lexical
from .quality import RECALL_K, SNIPPET_WORDS, GateResult, VectorSource, exact_topk, run_gate, snippet_queries
from .shards import ShardStore, ShardVectors, passages_digest

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
DEFAULT_MIN_RECALL = 0.9
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_GATE_QUERIES = 1000
#: Queries the gate uses for exact families (exact by construction: a cheap sanity check only).
EXACT_GATE_QUERIES = 100


class QualityGateError(ArtifactError):
    """The built index's recall is below the configured threshold; it was not published."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything about a build but the corpus and the encoder.

    ``search_params``: explicit defaults (``nprobe``/``efSearch``); a family parameter not given
    is tuned by the quality gate to reach ``target_recall``. ``store_vectors``: keep
    ``vectors.f32`` (``None``: whenever the index cannot give the exact vectors back).
    ``query_vectors``: the gate's query vectors (``query_label`` says what they are); ``None``
    uses held-aside passage vectors. :func:`build_index` fills in encoded passage snippets.
    ``lexical``: the BM25 side index's configuration (``None``: dense search only).
    """

    factory: str = "Flat"
    batch_size: int = 32
    shard_size: int = DEFAULT_SHARD_SIZE
    search_params: dict[str, int] = field(default_factory=dict)
    ef_construction: int | None = None
    train_size: int | None = None
    min_recall: float = DEFAULT_MIN_RECALL
    target_recall: float = DEFAULT_TARGET_RECALL
    gate_queries: int = DEFAULT_GATE_QUERIES
    query_vectors: np.ndarray | None = None
    query_label: str = "encoded queries"
    store_vectors: bool | None = None
    mmap: bool = False
    keep: int | None = None
    publish: bool = True
    seed: int = 0
    #: BM25 side index for the bm25 and hybrid search modes; ``None`` builds none.
    lexical: BM25Config | None = field(default_factory=BM25Config)
    #: Where the vectors are searched: ``faiss`` (index.faiss) or ``milvus`` (a collection at ``milvus_uri``).
    index_backend: str = "faiss"
    milvus_uri: str | None = None
    #: Collection and alias names start with this (default: ``md2pr_<index root name>``).
    milvus_prefix: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the version name, its directory and manifest (``published`` false with ``publish=False``)."""

    version: str
    directory: Path
    manifest: IndexManifest
    published: bool = True


def _chunks(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(passages)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_family(dimension: int, options: BuildOptions) -> FamilyInfo:
    """Validate the factory string, the backend and explicit search parameters before any work is done."""
    if options.index_backend == "milvus":
        if not options.milvus_uri:
            raise ArtifactError("the milvus backend needs a Milvus URI (--milvus-uri)")
        info = describe_milvus(*milvus_index_for(options.factory, options.ef_construction))
        if options.mmap:
            raise ArtifactError("--mmap applies to FAISS files; a Milvus collection lives in the Milvus server")
    elif options.index_backend == "faiss":
        info = describe_index(new_faiss_index(dimension, options.factory))
    else:
        raise ArtifactError(f"unknown index backend {options.index_backend!r} (faiss or milvus)")
    validate_search_params(info, options.factory, options.search_params)
    if options.ef_construction is not None and info.family != "hnsw":
        raise ArtifactError(f"--ef-construction applies to HNSW families, not {options.factory!r}")
    if not 0.0 <= options.min_recall <= 1.0 or not 0.0 < options.target_recall <= 1.0:
        raise ArtifactError("recall thresholds must be between 0 and 1")
    return info


def _clear_outputs(staging: Path) -> None:
    """Remove everything a previous (interrupted) run assembled; keep the shards."""
    for entry in staging.iterdir():
        if entry.name == BUILD_DIR:
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _discard_build_dir(index_root: Path, staging: Path) -> None:
    """Move ``_build`` out of the staging directory in one rename, then delete it."""
    build_dir = staging / BUILD_DIR
    if not build_dir.exists():
        return
    trash = index_root / TRASH_DIR
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / f"{staging.name}-build"
    if target.exists():
        shutil.rmtree(target)
    os.replace(build_dir, target)
    shutil.rmtree(target, ignore_errors=True)


def _check_passages(chunk: list[Passage], first: int, label: str) -> None:
    for i, p in enumerate(chunk):
        try:
            check_docid(p.docid)
        except ArtifactError as exc:
            raise DatasetFormatError(f"{label}: passage {first + i + 1}: {exc}") from None
        if not p.full_text.strip():
            raise DatasetFormatError(f"{label}: passage {first + i + 1} (docid {p.docid!r}) has no text")


def build_index(
    passages: Iterable[Passage],
    index_root: Path,
    encoder: DualEncoder,
    factory: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    corpus_label: str = "",
    show_progress: bool = True,
    *,
    options: BuildOptions | None = None,
    total_hint: int | None = None,
    engine: EncodingEngine | None = None,
) -> BuildResult:
    """Stream ``passages`` through ``encoder`` into shards, assemble, gate and publish a new version.

    ``factory``/``batch_size``/``chunk_size`` (the shard size), when given, override the same
    fields of ``options``. The encoder's backend encodes the passages (and the gate's queries)
    and is recorded in the manifest's ``encoder.backend``. Rerunning after a crash with the same
    corpus label, encoder, backend and encoding settings resumes from the finished shards. ``total_hint`` (an estimate of the
    passage count) gives the progress bar its ETA. ``engine`` encodes the shards
    (:mod:`index_build.engines`; default: :class:`~index_build.engines.LocalEngine`, this process);
    it does not change the vectors, so a build started on one engine resumes on the other.
    """
    options = options or BuildOptions()
    overrides = {"factory": factory, "batch_size": batch_size, "shard_size": chunk_size}
    options = replace(options, **{k: v for k, v in overrides.items() if v is not None})
    if options.batch_size < 1 or options.shard_size < 1:
        raise ArtifactError("batch size and shard size must be positive")
    index_root = Path(index_root)
    info = check_family(encoder.dimension, options)
    ref = EncoderRef(source=encoder.source, fingerprint=encoder.fingerprint, backend=encoder.backend.name)
    key = {
        "corpus": str(Path(corpus_label).resolve()) if corpus_label and Path(corpus_label).exists() else corpus_label,
        "encoder": encoder.fingerprint,
        "backend": encoder.backend.name,  # shards of another backend's vectors are not reused
        "dimension": encoder.dimension,
        "batch_size": options.batch_size,
        "shard_size": options.shard_size,
    }
    shards = ShardStore.find(index_root, key)
    if shards is None:
        shards = ShardStore.create(new_staging_dir(index_root), key)
    else:
        logger.info("resuming %s: %d passages already encoded in %d shards", shards.staging, shards.state.rows_done, len(shards.state.shards))
    staging = shards.staging
    try:
        started = time.monotonic()
        engine = engine or LocalEngine(PassageEncoder(encoder, options.batch_size))
        stats = _encode_corpus(passages, shards, engine, encoder.dimension, options, corpus_label, show_progress, total_hint)
        if stats["count"] == 0:
            shards.release()
            shutil.rmtree(staging, ignore_errors=True)
            raise DatasetFormatError(f"corpus {corpus_label or '(stream)'} holds no passages")
        build = {
            "corpus": corpus_label,
            **stats,
            "batch_size": options.batch_size,
            "shard_size": options.shard_size,
        }
        if options.query_vectors is None and options.gate_queries > 0:
            options = replace(options, **gate_snippet_queries(staging / STORE_FILE, encoder, options.gate_queries, options.seed))
        manifest = assemble(staging, ShardVectors(shards, encoder.dimension), info, options, ref, build, started)
        _discard_build_dir(index_root, staging)
    except BaseException:
        if (staging / BUILD_DIR).is_dir():
            logger.warning(
                "build stopped; the %d passages encoded so far are kept in %s and the same command resumes from them",
                shards.state.rows_done, staging,
            )
        shards.release()
        raise
    try:
        if not options.publish:
            logger.info("built %s (not published): %d passages", staging, manifest.count)
            return BuildResult(staging.name, staging, manifest, published=False)
        version = publish(index_root, staging, keep=options.keep)
    finally:
        shards.release()
    logger.info("published version %s: %d passages", version, manifest.count)
    return BuildResult(version, index_root / VERSIONS_DIR / version, manifest)


def _encode_corpus(
    passages: Iterable[Passage],
    shards: ShardStore,
    engine: EncodingEngine,
    dimension: int,
    options: BuildOptions,
    label: str,
    show_progress: bool,
    total_hint: int | None,
) -> dict[str, Any]:
    """Stage 1: write the passage store and docids, encoding every shard not already finished."""
    staging = shards.staging
    _clear_outputs(staging)
    resumable = shards.state.rows_done
    store = PassageStoreWriter(staging / STORE_FILE)
    docids = (staging / DOCIDS_FILE).open("w", encoding="utf-8", newline="\n")
    encoded = 0
    total = None if total_hint is None else max(total_hint - resumable, 0)
    desc = f"encoding (resuming after {resumable} passages)" if resumable else "encoding"
    bar = tqdm(total=total, desc=desc, unit="passage", disable=not show_progress, smoothing=0.05, dynamic_ncols=True)
    state = {"count": 0, "reused": 0, "number": 0}

    def pending() -> Iterator[tuple[tuple[int, list[Passage], str], list[str]]]:
        """Read the corpus; write the store and docids; yield every shard that must be (re-)encoded."""
        encoding = False
        for chunk in _chunks(passages, options.shard_size):
            number = state["number"]
            _check_passages(chunk, state["count"], label or "corpus")
            digest = passages_digest(chunk)
            if not encoding and shards.reusable(number, digest, dimension):
                state["reused"] += len(chunk)
            else:
                if not encoding:
                    shards.truncate(number)  # the corpus differs from here on: every later shard is re-encoded
                    encoding = True
                yield (number, chunk, digest), [p.full_text for p in chunk]
            try:
                store.add(chunk)
            except ArtifactError as exc:
                raise DatasetFormatError(f"{label or 'corpus'}: {exc}") from None
            docids.writelines(p.docid + "\n" for p in chunk)
            state["count"] += len(chunk)
            state["number"] += 1

    try:
        for (number, chunk, digest), vectors in engine.encode_shards(pending()):  # [len(chunk), dim]
            shards.record(number, chunk, digest, vectors)
            encoded += len(chunk)
            bar.update(len(chunk))
        count, reused = state["count"], state["reused"]
        shards.finish_reading(count, state["number"])
    finally:
        bar.close()
        store.close()
        docids.close()
    encode_s = engine.seconds
    return {
        "count": count,
        "encoded": encoded,
        "reused": reused,
        "encode_s": round(encode_s, 3),
        "passages_per_s": round(encoded / encode_s, 2) if encode_s > 0 else None,
        **engine.describe(),
    }


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
    explicit = validate_search_params(info, options.factory, options.search_params)
    defaults = default_search_params(index)
    t0 = time.monotonic()
    result, quality = quality_gate(index, info, source, options, query_rows, explicit, defaults)
    params = result.params if result else {**defaults, **explicit}
    set_index_params(index, params)
    write_faiss_index(index, staging / FAISS_FILE)
    lexical = build_lexical(staging, options.lexical) if options.lexical is not None else None
    manifest = IndexManifest(
        dimension=source.dimension,
        factory=options.factory,
        family=info.family,
        count=source.count,
        encoder=encoder,
        created_at=utc_now(),
        search_params=params,
        quality=quality,
        mmap=options.mmap,
        parent=parent,
        lexical=lexical,
        build={**build, **train_info, "gate_s": round(time.monotonic() - t0, 3), "duration_s": round(time.monotonic() - started, 3)},
    )
    return write_manifest(staging, manifest)


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
            explicit = validate_search_params(info, options.factory, options.search_params)
            defaults = default_family_params(info)
            t0 = time.monotonic()
            result, quality = quality_gate(index, info, source, options, query_rows, explicit, defaults)
        finally:
            index.close()
        params = result.params if result else {**defaults, **explicit}
        lexical = build_lexical(staging, options.lexical) if options.lexical is not None else None
        fields: dict[str, Any] = {
            "backend": "milvus",
            "milvus": ref,
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
            "build": {**build, **timings, "gate_s": round(time.monotonic() - t0, 3), "duration_s": round(time.monotonic() - started, 3)},
        }
        manifest = IndexManifest(**{**fields, **(manifest_extra or {})})
        return write_manifest(staging, manifest)
    except BaseException:
        drop_collection(ref)
        raise
