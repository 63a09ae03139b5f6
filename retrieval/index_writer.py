"""Writing an index directory from a corpus: the one corpus -> (passage store, docids, vectors) loop.

- :class:`CorpusFiles` writes the passage side of an index directory (``passages.sqlite`` and
  ``docids.txt``, in row order), checking every docid.
- :func:`encode_corpus` streams a corpus through it in chunks and has every chunk encoded by an
  *encode callable* that takes ``(key, texts)`` pairs and gives back ``(key, vectors)`` pairs in
  the same order (the shape of :meth:`index_build.engines.EncodingEngine.encode_shards`, so the
  build job hands it its local or Ray engine; :func:`passage_encoding` makes one from a
  :class:`~retrieval.encoder.DualEncoder`). The vectors of each chunk go to a *sink*: the build job
  records them as resumable shards and assembles its FAISS family from them; :func:`build_flat_index`
  adds them to a Flat index. A ``reuse`` callable lets the build job skip the leading chunks whose
  vectors it already holds (resume).
- :class:`IndexWriter` holds a FAISS index beside the passage side and writes the file and the
  manifest; :func:`build_flat_index` (corpus -> complete Flat index directory, what distillation
  builds for each student) is :func:`encode_corpus` into an :class:`IndexWriter`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import ArtifactError, DatasetFormatError
from .index import (
    DOCIDS_FILE,
    FAISS_FILE,
    EncoderRef,
    IndexManifest,
    check_docid,
    default_search_params,
    describe_index,
    new_faiss_index,
    set_index_params,
    utc_now,
    write_faiss_index,
    write_manifest,
)
from .passage_store import STORE_FILE, PassageStoreWriter
from .types import Passage

if TYPE_CHECKING:  # the encoder (torch) is imported only by those who encode
    from .encoder import DualEncoder

K = TypeVar("K")
#: ``(key, texts)`` pairs in -> ``(key, vectors [len(texts), dim] float32)`` pairs out, in input order.
EncodeShards = Callable[[Iterable[tuple[K, list[str]]]], Iterator[tuple[K, np.ndarray]]]
#: Receives each encoded chunk: ``(chunk number, passages, vectors [len(passages), dim])``.
ChunkSink = Callable[[int, list[Passage], np.ndarray], None]


class CorpusFiles:
    """The passage side of an index directory, written in row order: ``passages.sqlite`` and
    ``docids.txt``. :meth:`add` checks every docid (:func:`~retrieval.index.check_docid`);
    a repeated docid is refused by the store. Commit with :meth:`close`."""

    def __init__(self, directory: Path) -> None:
        self.store = PassageStoreWriter(directory / STORE_FILE)
        self._docids = (directory / DOCIDS_FILE).open("w", encoding="utf-8", newline="\n")

    @property
    def count(self) -> int:
        """Passages written so far."""
        return self.store.count

    def add(self, passages: Sequence[Passage]) -> None:
        """Append ``passages`` under the next row ids (:class:`ArtifactError` for a bad or repeated docid)."""
        for p in passages:
            check_docid(p.docid)
        self.store.add(passages)
        self._docids.writelines(p.docid + "\n" for p in passages)

    def close(self) -> None:
        self.store.close()
        self._docids.close()


@dataclass(frozen=True)
class CorpusStats:
    """What :func:`encode_corpus` read: passages, chunks, and how many passages it had encoded or reused."""

    count: int
    chunks: int
    encoded: int
    reused: int


def _chunks(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(passages)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def check_passages(chunk: Sequence[Passage], first: int, label: str) -> None:
    """Every passage of ``chunk`` (the corpus's passages ``first + 1 ..``) has a valid docid and some
    text; else :class:`DatasetFormatError` naming ``label`` and the passage's position."""
    for i, p in enumerate(chunk):
        try:
            check_docid(p.docid)
        except ArtifactError as exc:
            raise DatasetFormatError(f"{label}: passage {first + i + 1}: {exc}") from None
        if not p.full_text.strip():
            raise DatasetFormatError(f"{label}: passage {first + i + 1} (docid {p.docid!r}) has no text")


def encode_corpus(
    passages: Iterable[Passage],
    files: CorpusFiles,
    encode: EncodeShards,
    chunk_size: int,
    sink: ChunkSink,
    *,
    label: str = "corpus",
    reuse: Callable[[int, list[Passage]], bool] | None = None,
) -> CorpusStats:
    """Read ``passages`` once, ``chunk_size`` at a time: check each chunk (:func:`check_passages`),
    write it to ``files`` and then, unless reused, have ``encode`` encode its ``full_text`` and hand the
    vectors to ``sink`` (chunk by chunk, in corpus order; the corpus text in flight is whatever
    ``encode`` holds, never the whole corpus).

    ``reuse(number, chunk)`` is asked for the leading chunks only: while it answers True the chunk
    is not encoded (its vectors are the caller's already); from its first False on, every chunk is.
    """
    if chunk_size < 1:
        raise ArtifactError("chunk size must be positive")
    state = {"chunks": 0, "reused": 0, "encoded": 0}
    reusing = reuse is not None

    def pending() -> Iterator[tuple[tuple[int, list[Passage]], list[str]]]:
        nonlocal reusing
        for chunk in _chunks(passages, chunk_size):
            number = state["chunks"]
            check_passages(chunk, files.count, label)
            try:
                files.add(chunk)
            except ArtifactError as exc:
                raise DatasetFormatError(f"{label}: {exc}") from None
            state["chunks"] += 1
            reusing = reusing and reuse(number, chunk)  # type: ignore[misc]
            if reusing:
                state["reused"] += len(chunk)
            else:
                yield (number, chunk), [p.full_text for p in chunk]

    for (number, chunk), vectors in encode(pending()):  # [len(chunk), dim]
        sink(number, chunk, vectors)
        state["encoded"] += len(chunk)
    return CorpusStats(count=files.count, chunks=state["chunks"], encoded=state["encoded"], reused=state["reused"])


def passage_encoding(encoder: DualEncoder, batch_size: int = 32) -> EncodeShards:
    """An encode callable for :func:`encode_corpus`: :meth:`DualEncoder.encode_passages` on each chunk."""

    def encode(shards: Iterable[tuple[K, list[str]]]) -> Iterator[tuple[K, np.ndarray]]:
        for key, texts in shards:
            yield key, encoder.encode_passages(texts, batch_size=batch_size)  # [len(texts), dim]

    return encode


class IndexWriter:
    """Builds an index directory incrementally: :meth:`add` chunks, then :meth:`finish`.

    Families that need training (IVF, PQ) keep vectors in memory and train on all of them at
    :meth:`finish`; ``Flat`` and ``HNSW`` add as they go. (The production build path,
    :mod:`index_build`, encodes into resumable shards and trains on a sample instead.)
    """

    def __init__(self, directory: Path, dimension: int, factory: str, encoder: EncoderRef) -> None:
        self._index = new_faiss_index(dimension, factory)
        directory.mkdir(parents=True, exist_ok=True)
        if any(directory.iterdir()):
            raise ArtifactError(f"{directory}: index directory is not empty")
        self.directory = directory
        self.dimension = dimension
        self.factory = factory
        self.encoder = encoder
        self.files = CorpusFiles(directory)
        self._pending: list[np.ndarray] = []
        self._started = time.monotonic()

    @property
    def count(self) -> int:
        """Passages added so far."""
        return self.files.count

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None:
        """Add passages with their vectors ``[len(passages), dimension]`` float32."""
        if vectors.shape != (len(passages), self.dimension):
            raise ArtifactError(f"vectors of shape {vectors.shape} for {len(passages)} passages of dim {self.dimension}")
        self.files.add(passages)
        self.add_vectors(vectors)

    def add_vectors(self, vectors: np.ndarray) -> None:
        """Add the vectors ``[n, dimension]`` of passages already written to :attr:`files`."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ArtifactError(f"vectors of shape {vectors.shape} for an index of dim {self.dimension}")
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
        self.files.close()
        if self._index.ntotal != self.count:
            raise ArtifactError(f"index holds {self._index.ntotal} vectors for {self.count} passages")
        params = default_search_params(self._index)
        set_index_params(self._index, params)
        write_faiss_index(self._index, self.directory / FAISS_FILE)
        elapsed = time.monotonic() - self._started
        manifest = IndexManifest(
            dimension=self.dimension,
            factory=self.factory,
            family=describe_index(self._index).family,
            count=self.count,
            encoder=self.encoder,
            created_at=utc_now(),
            search_params=params,
            build={"duration_s": round(elapsed, 3), **(build or {})},
        )
        return write_manifest(self.directory, manifest)


def build_flat_index(
    passages: Iterable[Passage],
    directory: Path,
    encode: EncodeShards,
    dimension: int,
    encoder: EncoderRef,
    *,
    chunk_size: int = 1024,
    build: dict[str, Any] | None = None,
    label: str = "corpus",
    on_chunk: Callable[[int], None] | None = None,
) -> IndexManifest:
    """Encode ``passages`` (:func:`encode_corpus`, ``chunk_size`` at a time) into a complete Flat
    index at the empty or new ``directory``; ``build`` adds to the manifest's ``build`` record and
    ``on_chunk(n)`` is told each chunk's size once it is in (a progress bar). Returns the manifest."""
    writer = IndexWriter(directory, dimension, "Flat", encoder)

    def add(_number: int, chunk: list[Passage], vectors: np.ndarray) -> None:
        if vectors.shape != (len(chunk), dimension):
            raise ArtifactError(f"vectors of shape {vectors.shape} for {len(chunk)} passages of dim {dimension}")
        writer.add_vectors(vectors)
        if on_chunk is not None:
            on_chunk(len(chunk))

    try:
        encode_corpus(passages, writer.files, encode, chunk_size, add, label=label)
    except BaseException:
        writer.files.close()
        raise
    return writer.finish(build)
