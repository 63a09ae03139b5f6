"""Encode a corpus with a dual encoder into a new, published index version."""

from __future__ import annotations

import itertools
import shutil
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retrieval.encoder import DualEncoder
from retrieval.index import EncoderRef, IndexManifest, IndexWriter
from retrieval.errors import DatasetFormatError
from retrieval.index_versions import VERSIONS_DIR, new_staging_dir, publish
from retrieval.types import Passage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """What a build published: the version name, its directory and manifest."""

    version: str
    directory: Path
    manifest: IndexManifest


def _chunks(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(passages)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def build_index(
    passages: Iterable[Passage],
    index_root: Path,
    encoder: DualEncoder,
    factory: str = "Flat",
    batch_size: int = 32,
    chunk_size: int = 256,
    corpus_label: str = "",
    show_progress: bool = True,
) -> BuildResult:
    """Stream ``passages`` through ``encoder`` into a staged index, then publish it atomically.

    Passages are read ``chunk_size`` at a time (never the whole corpus in memory) and encoded
    in length-sorted batches; the staged directory only becomes a version once complete.
    """
    staging = new_staging_dir(index_root)
    try:
        ref = EncoderRef(source=encoder.source, fingerprint=encoder.fingerprint)
        writer = IndexWriter(staging, encoder.dimension, factory, ref)
        started = time.monotonic()
        with tqdm(desc="encoding", unit="passage", disable=not show_progress, smoothing=0.1) as bar:
            for chunk in _chunks(passages, chunk_size):
                vectors = encoder.encode_passages([p.full_text for p in chunk], batch_size=batch_size)  # [chunk, dim]
                writer.add(chunk, vectors)
                bar.update(len(chunk))
        if writer.count == 0:
            raise DatasetFormatError(f"corpus {corpus_label or '(stream)'} holds no passages")
        encode_s = time.monotonic() - started
        manifest = writer.finish(
            {
                "corpus": corpus_label,
                "encode_s": round(encode_s, 3),
                "passages_per_s": round(writer.count / encode_s, 2) if encode_s > 0 else None,
                "batch_size": batch_size,
            }
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed build leaves nothing behind
        raise
    version = publish(index_root, staging)
    logger.info("published version %s: %d passages, %.1f passages/s", version, manifest.count, manifest.build["passages_per_s"] or 0)
    return BuildResult(version, index_root / VERSIONS_DIR / version, manifest)
