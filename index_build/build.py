"""Encode a corpus with a dual encoder into a new, validated, published index version.

The job, in order:

1. **Stream and encode in shards** (:mod:`index_build.shards`): the corpus is read once,
   ``shard_size`` passages at a time (never all text in memory); each shard's vectors are
   written as a float32 ``.npy`` and recorded, so a killed job resumes from its finished
   shards. The passage store and ``docids.txt`` are written along the way.
2. **Assemble** (:func:`index_build.assemble.assemble`): train the FAISS family on a sample if it needs it, add
   every shard, keep the raw vectors when the index cannot give them back.
3. **Quality gate** (:mod:`index_build.quality`): recall@10 against exact search on held-aside
   vectors, with ``nprobe``/``efSearch`` defaults tuned to a target unless given; below
   ``min_recall`` the build fails and nothing is published.
4. **Publish** (:func:`retrieval.index_versions.publish`): the staged directory becomes a
   version and ``CURRENT`` switches atomically; older versions beyond ``keep`` are pruned.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError, DatasetFormatError
from retrieval.index import BUILD_DIR, EncoderRef
from retrieval.index_versions import TRASH_DIR, VERSIONS_DIR, new_staging_dir, publish
from retrieval.index_writer import CorpusFiles, encode_corpus
from retrieval.passage_store import STORE_FILE
from retrieval.types import Passage

from .assemble import (  # re-exported: the re-index job and the benchmarks assemble through here too
    _gate_sample,
    assemble,
    assemble_milvus,
    default_train_size,
    gate_snippet_queries,
    milvus_ref,
    quality_gate,
    train_and_fill,
    write_vectors,
)
from .encoding import PassageEncoder
from .engines import EncodingEngine, LocalEngine
from .options import (  # re-exported
    DEFAULT_GATE_QUERIES,
    DEFAULT_MIN_RECALL,
    DEFAULT_SHARD_SIZE,
    DEFAULT_TARGET_RECALL,
    EXACT_GATE_QUERIES,
    BuildOptions,
    BuildResult,
    QualityGateError,
    check_family,
)
from .shards import ShardStore, ShardVectors, passages_digest

logger = logging.getLogger(__name__)

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
    """Stage 1: write the passage store and docids, encoding every shard not already finished
    (:func:`retrieval.index_writer.encode_corpus`, the corpus loop every index build runs)."""
    staging = shards.staging
    _clear_outputs(staging)
    resumable = shards.state.rows_done
    files = CorpusFiles(staging)
    total = None if total_hint is None else max(total_hint - resumable, 0)
    desc = f"encoding (resuming after {resumable} passages)" if resumable else "encoding"
    bar = tqdm(total=total, desc=desc, unit="passage", disable=not show_progress, smoothing=0.05, dynamic_ncols=True)

    def reuse(number: int, chunk: list[Passage]) -> bool:
        """A finished shard of the same passages is kept; the first that differs truncates the rest."""
        if shards.reusable(number, passages_digest(chunk), dimension):
            return True
        shards.truncate(number)  # the corpus differs from here on: every later shard is re-encoded
        return False

    def record(number: int, chunk: list[Passage], vectors: np.ndarray) -> None:
        shards.record(number, chunk, passages_digest(chunk), vectors)
        bar.update(len(chunk))

    try:
        stats = encode_corpus(passages, files, engine.encode_shards, options.shard_size, record, label=label or "corpus", reuse=reuse)
        shards.finish_reading(stats.count, stats.chunks)
    finally:
        bar.close()
        files.close()
    encode_s = engine.seconds
    return {
        "count": stats.count,
        "encoded": stats.encoded,
        "reused": stats.reused,
        "encode_s": round(encode_s, 3),
        "passages_per_s": round(stats.encoded / encode_s, 2) if encode_s > 0 else None,
        **engine.describe(),
    }
