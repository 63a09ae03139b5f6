"""The one corpus -> index directory loop (retrieval.index_writer): encode_corpus's chunks, reuse and
checks, build_flat_index, and the same Flat index from distillation's and the build job's paths."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from index_build.build import BuildOptions, build_index
from retrieval.datasets import iter_corpus
from retrieval.errors import DatasetFormatError
from retrieval.index import IndexArtifact, read_docids
from retrieval.index_writer import CorpusFiles, build_flat_index, encode_corpus, passage_encoding
from retrieval.types import Passage
from training.distill.datasets import build_student_index

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 4


def _passages(n: int) -> list[Passage]:
    return [Passage(f"d{i}", f"title {i}", f"text of passage {i}") for i in range(n)]


def _fake_encode(calls: list[list[str]]):
    """An encode callable whose vector for a text is its passage number (every component), recording each chunk."""

    def encode(shards: Iterable[tuple[object, list[str]]]) -> Iterator[tuple[object, np.ndarray]]:
        for key, texts in shards:
            calls.append(texts)
            numbers = [float(t.rsplit(" ", 1)[1]) for t in texts]
            yield key, np.repeat(np.asarray(numbers, dtype=np.float32)[:, None], DIM, axis=1)

    return encode


def _store_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM passages ORDER BY row_id").fetchall()


def test_encode_corpus_chunks_reuses_the_leading_chunks_only_and_writes_every_passage(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    asked: list[int] = []
    received: list[tuple[int, list[str], list[float]]] = []

    def reuse(number: int, chunk: list[Passage]) -> bool:
        asked.append(number)
        return number != 1  # chunk 0 is reused, chunk 1 is not; chunk 2 would be, but is not asked

    files = CorpusFiles(tmp_path)
    stats = encode_corpus(
        _passages(10), files, _fake_encode(calls), 4,
        lambda number, chunk, vectors: received.append((number, [p.docid for p in chunk], vectors[:, 0].tolist())),
        reuse=reuse,
    )
    files.close()
    assert asked == [0, 1]
    assert (stats.count, stats.chunks, stats.encoded, stats.reused) == (10, 3, 6, 4)
    assert [len(texts) for texts in calls] == [4, 2]
    assert calls[0][0] == "title 4 text of passage 4"  # full_text: title and text
    assert received == [(1, ["d4", "d5", "d6", "d7"], [4.0, 5.0, 6.0, 7.0]), (2, ["d8", "d9"], [8.0, 9.0])]
    assert read_docids(tmp_path / "docids.txt") == [f"d{i}" for i in range(10)]
    assert [row[:2] for row in _store_rows(tmp_path / "passages.sqlite")] == [(i, f"d{i}") for i in range(10)]


@pytest.mark.parametrize(
    ("passages", "message"),
    [
        ([Passage("a", "", "x"), Passage("b", " ", " ")], r"my corpus: passage 2 \(docid 'b'\) has no text"),
        ([Passage("a", "", "x"), Passage("a", "", "y")], r"my corpus: duplicate docid"),
        ([Passage("a", "", "x"), Passage("b\tc", "", "y")], r"my corpus: passage 2: docid"),
    ],
)
def test_encode_corpus_refuses_bad_passages_naming_the_corpus(tmp_path: Path, passages: list[Passage], message: str) -> None:
    files = CorpusFiles(tmp_path)
    with pytest.raises(DatasetFormatError, match=message):
        encode_corpus(passages, files, _fake_encode([]), 8, lambda *_: None, label="my corpus")
    files.close()


def test_build_flat_index_holds_every_passage_with_its_own_vector(tmp_path: Path) -> None:
    from retrieval.index import EncoderRef

    ref = EncoderRef(source="test-encoder", fingerprint="f" * 64)
    sizes: list[int] = []
    manifest = build_flat_index(_passages(7), tmp_path / "flat", _fake_encode([]), DIM, ref, chunk_size=3,
                                build={"corpus": "seven"}, on_chunk=sizes.append)
    assert (manifest.factory, manifest.family, manifest.count, manifest.encoder) == ("Flat", "flat", 7, ref)
    assert manifest.build["corpus"] == "seven" and sizes == [3, 3, 1]
    with IndexArtifact.open(tmp_path / "flat") as index:
        np.testing.assert_array_equal(index.all_vectors()[:, 0], np.arange(7, dtype=np.float32))
        assert index.docids == [f"d{i}" for i in range(7)] and index.store.get("d5").text == "text of passage 5"


def test_distillation_and_the_build_job_build_the_same_flat_index(noveleval: Path, encoder, tmp_path: Path) -> None:
    """build_student_index (distillation) and md2pr-build-index's Flat build read the corpus through
    the same loop: same rows, docids, passage store and vectors, bit for bit."""
    student = build_student_index(encoder, noveleval, tmp_path / "student", batch_size=16, show_progress=False, chunk=100)
    built = build_index(iter_corpus(noveleval), tmp_path / "root", encoder, corpus_label=str(noveleval), show_progress=False,
                        options=BuildOptions(factory="Flat", batch_size=16, shard_size=100))
    with IndexArtifact.open(student) as a, IndexArtifact.open(built.directory) as b:
        assert a.manifest.count == b.manifest.count == len(list(iter_corpus(noveleval)))
        assert a.docids == b.docids
        assert _store_rows(a.store.path) == _store_rows(b.store.path)
        np.testing.assert_array_equal(a.all_vectors(), b.all_vectors())
        expected = encoder.encode_passages([p.full_text for p in iter_corpus(noveleval)][:100], batch_size=16)
        np.testing.assert_array_equal(a.all_vectors()[:100], expected)


def test_passage_encoding_is_the_encoders_own_passage_encode(encoder) -> None:
    texts = ["a short passage", "a somewhat longer passage about retrieval and distillation"]
    [(key, vectors)] = list(passage_encoding(encoder, batch_size=1)([("k", texts)]))
    assert key == "k"
    np.testing.assert_array_equal(vectors, encoder.encode_passages(texts, batch_size=1))
