"""Index artifact: write/read round trip, search, versioned publishing, corrupt and mismatched artifacts."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import ArtifactError, ArtifactMismatchError
from retrieval.index import (
    DOCIDS_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    EncoderRef,
    IndexArtifact,
    SearchParamsError,
    read_manifest,
    write_manifest,
)
from retrieval.index_versions import (
    current_version,
    list_versions,
    new_staging_dir,
    prune,
    publish,
    resolve_index_dir,
    rollback,
    set_current,
)
from retrieval.index_writer import IndexWriter
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


# ------------------------------------------------------------------------- families and params


def _build_family(directory: Path, factory: str, n: int = 400, dim: int = 16) -> np.ndarray:
    vectors = _vectors(n, dim, seed=1)
    passages = [Passage(f"doc{i}", "", f"text {i}") for i in range(n)]
    writer = IndexWriter(directory, dim, factory, REF)
    writer.add(passages, vectors)
    writer.finish()
    return vectors


@pytest.mark.parametrize(
    "factory, family, params",
    [
        ("Flat", "flat", {}),
        ("HNSW16", "hnsw", {"efSearch": 64}),
        ("IVF8,Flat", "ivf", {"nprobe": 8}),
        ("OPQ4,IVF8,PQ4", "ivf", {"nprobe": 8}),
        ("PQ4", "codes", {}),
    ],
)
def test_families_record_default_search_params(tmp_path: Path, factory: str, family: str, params: dict) -> None:
    vectors = _build_family(tmp_path / "idx", factory)
    index = IndexArtifact.open(tmp_path / "idx")
    assert index.manifest.family == family and index.manifest.search_params == params == index.search_params
    _, rows = index.search(vectors[:5], top_k=3)
    assert rows.shape == (5, 3) and (rows >= 0).all() and (rows < 400).all()


def test_search_params_are_per_call(tmp_path: Path) -> None:
    vectors = _build_family(tmp_path / "idx", "IVF16,Flat", n=2000)
    index = IndexArtifact.open(tmp_path / "idx")
    queries = _vectors(50, 16, seed=7)
    exact = queries @ vectors.T
    top = np.argsort(-exact, axis=1)[:, :10]

    def recall(rows: np.ndarray) -> float:
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), top.tolist())])

    low = recall(index.search(queries, 10, {"nprobe": 1})[1])
    full = recall(index.search(queries, 10, {"nprobe": 16})[1])
    assert low < full == pytest.approx(1.0)
    assert recall(index.search(queries, 10)[1]) == recall(index.search(queries, 10, None)[1])  # defaults
    assert index.index.nprobe == 16  # the shared index object was never changed by a call


@pytest.mark.parametrize(
    "factory, params, message",
    [
        ("IVF8,Flat", {"nprob": 2}, "unknown search parameter 'nprob'"),
        ("IVF8,Flat", {"efSearch": 2}, "does not apply to index family 'IVF8,Flat'"),
        ("Flat", {"nprobe": 2}, "supported: none"),
        ("HNSW16", {"nprobe": 2}, "supported: efSearch"),
        ("IVF8,Flat", {"nprobe": 0}, "between 1 and 8"),
        ("IVF8,Flat", {"nprobe": 9}, "between 1 and 8"),
        ("HNSW16", {"efSearch": 5000}, "between 1 and 4096"),
        ("HNSW16", {"efSearch": "64"}, "must be an integer"),
        ("HNSW16", {"efSearch": True}, "must be an integer"),
    ],
)
def test_bad_search_params_are_one_line_errors(tmp_path: Path, factory: str, params: dict, message: str) -> None:
    vectors = _build_family(tmp_path / "idx", factory)
    index = IndexArtifact.open(tmp_path / "idx")
    with pytest.raises(SearchParamsError, match=message) as info:
        index.search(vectors[:1], 3, params)
    assert isinstance(info.value, ArtifactError) and "\n" not in str(info.value)


def test_mmap_open_searches_the_same(tmp_path: Path) -> None:
    for factory in ("Flat", "IVF8,Flat", "HNSW16"):
        vectors = _build_family(tmp_path / factory, factory)
        loaded = IndexArtifact.open(tmp_path / factory)
        mapped = IndexArtifact.open(tmp_path / factory, mmap=True)
        a, b = loaded.search(vectors[:20], 5), mapped.search(vectors[:20], 5)
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("factory", ["IVF8,Flat", "OPQ4,IVF8,PQ4"])
def test_mmap_ivf_lists_do_not_prefetch(tmp_path: Path, factory: str) -> None:
    import faiss

    vectors = _build_family(tmp_path / "idx", factory)
    mapped = IndexArtifact.open(tmp_path / "idx", mmap=True)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(mapped.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # memory-mapped lists, which would start 32 threads per search
    assert lists.prefetch_nthread == 0
    loaded = IndexArtifact.open(tmp_path / "idx")
    np.testing.assert_array_equal(mapped.search(vectors[:20], 5)[1], loaded.search(vectors[:20], 5)[1])
    mapped.close()
    loaded.close()


def test_exact_vectors_come_back(tmp_path: Path) -> None:
    vectors = _build_family(tmp_path / "flat", "Flat")
    index = IndexArtifact.open(tmp_path / "flat")
    assert index.has_vectors()
    np.testing.assert_array_equal(index.take_vectors(np.array([5, 1])), vectors[[5, 1]])
    np.testing.assert_array_equal(np.concatenate([c for _, c in index.iter_vectors(chunk=64)]), vectors)
    _build_family(tmp_path / "pq", "PQ4")
    lossy = IndexArtifact.open(tmp_path / "pq")
    assert not lossy.has_vectors()
    with pytest.raises(ArtifactError, match="keeps no exact vectors"):
        lossy.take_vectors(np.array([0]))


def test_all_vectors_in_row_order_and_closed_by_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = _build(tmp_path / "flat", n=20)
    closed: list[IndexArtifact] = []
    real_close = IndexArtifact.close
    monkeypatch.setattr(IndexArtifact, "close", lambda self: (closed.append(self), real_close(self)))
    with IndexArtifact.open(tmp_path / "flat") as index:
        everything = index.all_vectors()
        assert not closed
    assert closed == [index]
    assert everything.shape == (20, 8) and everything.dtype == np.float32
    np.testing.assert_array_equal(everything, vectors)


def test_extra_files_are_listed_and_checked(tmp_path: Path) -> None:
    directory = tmp_path / "idx"
    _build(directory)
    (directory / "bm25").mkdir()
    (directory / "bm25" / "params.json").write_text("{}")
    manifest = write_manifest(directory, read_manifest(directory))
    assert manifest.files["bm25/params.json"] == 2
    assert IndexArtifact.open(directory).manifest.files == manifest.files
    (directory / "bm25" / "params.json").write_text("{ }")
    with pytest.raises(ArtifactError, match="bm25/params.json is 3 bytes"):
        IndexArtifact.open(directory)


def test_old_manifests_still_open(tmp_path: Path) -> None:
    """A manifest written before search_params/quality/family existed opens with defaults."""
    directory = tmp_path / "idx"
    _build_family(directory, "IVF8,Flat")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    for key in ("family", "search_params", "quality", "mmap", "parent"):
        manifest.pop(key)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    index = IndexArtifact.open(directory)
    assert index.search_params == {} and index.family.family == "ivf"
    assert index.search(_vectors(1, 16), 3, {"nprobe": 2})[1].shape == (1, 3)


# ----------------------------------------------------------------------------------- versions


def _publish_version(root: Path, n: int) -> str:
    staged = new_staging_dir(root)
    _build(staged, n=n)
    return publish(root, staged)


def test_list_rollback_and_prune(tmp_path: Path) -> None:
    root = tmp_path / "root"
    names = [_publish_version(root, n) for n in (10, 12, 14, 16)]
    listed = list_versions(root)
    assert [v.name for v in listed] == names and [v.current for v in listed] == [False, False, False, True]
    assert [v.manifest.count for v in listed] == [10, 12, 14, 16]
    assert rollback(root) == names[2] and current_version(root) == names[2]
    assert rollback(root) == names[1]
    assert rollback(root, names[3]) == names[3]  # roll forward by name
    with pytest.raises(ArtifactError, match="no version 'nope'"):
        rollback(root, "nope")
    set_current(root, names[0])
    removed = prune(root, keep=2)
    assert removed == [names[1]]  # the oldest goes, but never the served one
    assert [v.name for v in list_versions(root)] == [names[0], names[2], names[3]]
    assert IndexArtifact.open(resolve_index_dir(root)).manifest.count == 10
    with pytest.raises(ArtifactError, match="no complete version older"):
        rollback(root)
    assert not (root / ".trash").exists() or not any((root / ".trash").iterdir())


def test_publish_keep_prunes_and_checks_current(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = _publish_version(root, 10)
    staged = new_staging_dir(root)
    _build(staged, n=11)
    with pytest.raises(ArtifactError, match="CURRENT moved"):
        publish(root, staged, expect_current="someone-else")
    assert current_version(root) == first and staged.is_dir()
    second = publish(root, staged, keep=1, expect_current=first)
    assert [v.name for v in list_versions(root)] == [second]


def test_publish_refuses_a_damaged_or_unfinished_build(tmp_path: Path) -> None:
    root = tmp_path / "root"
    staged = new_staging_dir(root)
    _build(staged)
    os.truncate(staged / DOCIDS_FILE, 3)
    with pytest.raises(ArtifactError, match="corrupt copy"):
        publish(root, staged)
    staged = new_staging_dir(root)
    _build(staged)
    (staged / "_build").mkdir()
    with pytest.raises(ArtifactError, match="did not finish"):
        publish(root, staged)
    assert current_version(root) is None


def test_concurrent_reader_never_sees_a_broken_version(tmp_path: Path) -> None:
    """A reader resolving CURRENT in a loop while versions are published, rolled back and pruned."""
    root = tmp_path / "root"
    _publish_version(root, 10)
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                index = IndexArtifact.open(resolve_index_dir(root))
            except ArtifactError as exc:
                # ("passage store missing" when the prune lands between the manifest and the store)
                if "missing" in str(exc) or "not a complete index" in str(exc):
                    continue  # the version was pruned between resolving and opening: retry, never half-read
                errors.append(str(exc))
                continue
            seen.add(index.manifest.count)
            assert len(index.docids) == index.manifest.count == index.store.count
            index.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(11, 31):
            staged = new_staging_dir(root)
            _build(staged, n=n)
            publish(root, staged, keep=3)
            if n % 4 == 0:
                rollback(root)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(seen) > 1
