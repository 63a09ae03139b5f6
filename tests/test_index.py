"""Index artifact: write/read round trip, search, versioned publishing, corrupt and mismatched artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import ArtifactError, ArtifactMismatchError
from retrieval.index import DOCIDS_FILE, FAISS_FILE, MANIFEST_FILE, EncoderRef, IndexArtifact, IndexWriter
from retrieval.index_versions import current_version, new_staging_dir, publish, resolve_index_dir
from retrieval.types import Passage

REF = EncoderRef(source="test-encoder", fingerprint="f" * 64)


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _build(directory: Path, n: int = 20, factory: str = "Flat") -> np.ndarray:
    vectors = _vectors(n)
    passages = [Passage(f"doc{i}", f"title {i}", f"text of passage {i}") for i in range(n)]
    writer = IndexWriter(directory, 8, factory, REF)
    writer.add(passages[: n // 2], vectors[: n // 2])
    writer.add(passages[n // 2 :], vectors[n // 2 :])
    writer.finish({"corpus": "unit"})
    return vectors


def test_round_trip_and_exact_search(tmp_path: Path) -> None:
    vectors = _build(tmp_path / "idx")
    index = IndexArtifact.open(tmp_path / "idx")
    assert index.manifest.count == 20 and index.manifest.dimension == 8 and index.manifest.factory == "Flat"
    assert index.docids[3] == "doc3"
    scores, rows = index.search(vectors[[3, 7]], top_k=5)
    assert rows[:, 0].tolist() == [3, 7]  # each vector is its own nearest neighbour
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # descending
    assert index.store.get_rows([3])[3] == Passage("doc3", "title 3", "text of passage 3")
    assert index.store.get("doc19").text == "text of passage 19"
    _, rows = index.search(vectors[:1], top_k=1000)
    assert rows.shape == (1, 20)  # top_k clipped to the corpus size


def test_trained_family_is_built_on_finish(tmp_path: Path) -> None:
    _build(tmp_path / "ivf", n=64, factory="IVF4,Flat")
    assert IndexArtifact.open(tmp_path / "ivf").index.ntotal == 64


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / MANIFEST_FILE).unlink(), "not an index directory"),
        (lambda d: (d / MANIFEST_FILE).write_text("{not json"), "corrupt manifest"),
        (lambda d: (d / FAISS_FILE).unlink(), "index.faiss is missing"),
        (lambda d: os.truncate(d / FAISS_FILE, 100), "corrupt copy"),
        (lambda d: (d / DOCIDS_FILE).write_text("x\n" * 20 + "y\n"), "bytes, manifest says"),
    ],
)
def test_damaged_artifact_gives_one_clear_error(tmp_path: Path, damage, message: str) -> None:
    _build(tmp_path / "idx")
    damage(tmp_path / "idx")
    with pytest.raises(ArtifactError, match=message) as info:
        IndexArtifact.open(tmp_path / "idx")
    assert "\n" not in str(info.value)


def test_inconsistent_counts_are_a_mismatch(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / MANIFEST_FILE).read_text())
    manifest["count"] = 21
    (tmp_path / "idx" / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatchError, match="FAISS holds 20 vectors, manifest says 21"):
        IndexArtifact.open(tmp_path / "idx")


def test_query_dimension_mismatch(tmp_path: Path) -> None:
    _build(tmp_path / "idx")
    with pytest.raises(ArtifactMismatchError, match="dimension 8"):
        IndexArtifact.open(tmp_path / "idx").search(np.zeros((1, 4), np.float32), 3)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="invalid FAISS factory"):
        IndexWriter(tmp_path / "a", 8, "NoSuchIndex", REF)
    writer = IndexWriter(tmp_path / "b", 8, "Flat", REF)
    with pytest.raises(ArtifactError, match="shape"):
        writer.add([Passage("d", "", "t")], _vectors(2))
    with pytest.raises(ArtifactError, match="tab or newline"):
        writer.add([Passage("a\tb", "", "t")], _vectors(1))
    writer.add([Passage("d", "", "t")], _vectors(1))
    with pytest.raises(ArtifactError, match="duplicate docid"):
        writer.add([Passage("d", "", "again")], _vectors(1))


def test_publish_switches_current_and_keeps_versions(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert current_version(root) is None
    with pytest.raises(ArtifactError, match="no such index"):
        resolve_index_dir(root)
    first = new_staging_dir(root)
    _build(first)
    v1 = publish(root, first)
    assert resolve_index_dir(root) == root / "versions" / v1
    second = new_staging_dir(root)
    _build(second, n=10)
    v2 = publish(root, second)
    assert v1 != v2 and current_version(root) == v2
    assert IndexArtifact.open(resolve_index_dir(root)).manifest.count == 10
    assert IndexArtifact.open(root / "versions" / v1).manifest.count == 20  # old version untouched
    assert not list(root.glob(".CURRENT*"))  # no temp pointer left behind


def test_incomplete_build_cannot_be_published(tmp_path: Path) -> None:
    staged = new_staging_dir(tmp_path)
    IndexWriter(staged, 8, "Flat", REF).add([Passage("d", "", "t")], _vectors(1))
    with pytest.raises(ArtifactError, match="no manifest.json"):
        publish(tmp_path, staged)
    assert current_version(tmp_path) is None
