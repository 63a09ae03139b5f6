"""The Milvus index backend (retrieval.milvus_index) against a milvus-lite server started by a fixture.

The server is ``python -m milvus_lite server`` (pip milvus-lite, embedded engine, nothing
downloaded) on a free loopback port, one per module; the build job, the retriever and the
service all reach it over gRPC, as they would a Milvus standalone server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from fastapi.testclient import TestClient  # noqa: E402

from index_build.cli import main as build_main  # noqa: E402
from index_build.index_cli import main as index_main  # noqa: E402
from retrieval.index import IndexArtifact, read_manifest  # noqa: E402
from retrieval.index_versions import CURRENT_FILE, VERSIONS_DIR, list_versions, prune, resolve_index_dir, rollback  # noqa: E402
from retrieval.milvus_index import aliased_collection, connect  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A milvus-lite gRPC server in a child process; yields its URI."""
    data = tmp_path_factory.mktemp("milvus-data")
    port = _free_port()
    log = (data.parent / "milvus.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-lite server did not start: {(data.parent / 'milvus.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _build(noveleval: Path, root: Path, model: Path, *extra: str) -> int:
    return build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(model), "--no-progress",
                       "--gate-queries", "50", *extra])


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path, milvus_uri: str) -> dict[str, Path]:
    """NovelEval built twice with the tiny encoder: FAISS Flat and Milvus FLAT (the same vectors)."""
    base = tmp_path_factory.mktemp("milvus-roots")
    assert _build(noveleval, base / "faiss", tiny_model_dir) == 0
    assert _build(noveleval, base / "milvus", tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri) == 0
    return {"faiss": base / "faiss", "milvus": base / "milvus"}


def test_the_manifest_names_the_collection_and_the_alias_follows_current(roots: dict[str, Path], milvus_uri: str) -> None:
    version = resolve_index_dir(roots["milvus"])
    manifest = read_manifest(version)
    assert manifest.backend == "milvus" and manifest.milvus is not None
    ref = manifest.milvus
    assert ref.uri == milvus_uri and ref.index_type == "FLAT" and ref.metric == "IP"
    assert ref.collection == "md2pr_milvus_" + version.name.replace("-", "_")
    assert ref.alias == "md2pr_milvus_current"
    assert aliased_collection(milvus_uri, ref.alias) == ref.collection
    assert not (version / "index.faiss").exists() and (version / "vectors.f32").is_file()
    client = connect(milvus_uri)
    try:
        assert int(client.get_collection_stats(ref.collection)["row_count"]) == manifest.count == 420
        row = client.query(ref.collection, ids=[7], output_fields=["docid"])[0]
    finally:
        client.close()
    assert row["docid"] == (version / "docids.txt").read_text().split("\n")[7]
    assert manifest.quality["recall_at_k"] == 1.0 and manifest.quality["exact_family"] is True


def test_milvus_search_equals_faiss_flat_on_the_same_vectors(roots: dict[str, Path], noveleval: Path) -> None:
    from retrieval.datasets import read_tsv_queries

    queries = list(read_tsv_queries(noveleval / "queries.tsv").values())
    faiss_side, milvus_side = Retriever.open(roots["faiss"]), Retriever.open(roots["milvus"])
    try:
        assert np.array_equal(faiss_side.index.all_vectors(), milvus_side.index.all_vectors())
        a = faiss_side.search(queries, top_k=10, return_text=True)
        b = milvus_side.search(queries, top_k=10, return_text=True)
        hybrid = milvus_side.search(queries[:3], top_k=5, mode="hybrid")
    finally:
        faiss_side.close()
        milvus_side.close()
    for fa, mi in zip(a, b):
        assert [h.docid for h in fa] == [h.docid for h in mi]
        np.testing.assert_allclose([h.score for h in fa], [h.score for h in mi], atol=1e-5)
        assert [h.text for h in fa] == [h.text for h in mi] and mi[0].text
    assert all(len(hits) == 5 for hits in hybrid)


def test_hnsw_on_milvus_is_gated_and_tuned(noveleval: Path, tiny_model_dir: Path, milvus_uri: str, tmp_path: Path) -> None:
    root = tmp_path / "hnsw"
    assert _build(noveleval, root, tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri,
                  "--factory", "HNSW16", "--no-bm25") == 0
    manifest = read_manifest(resolve_index_dir(root))
    assert manifest.milvus.index_type == "HNSW" and manifest.milvus.index_params == {"M": 16, "efConstruction": 80}
    assert manifest.family == "hnsw" and "efSearch" in manifest.search_params
    assert manifest.quality["params"] == manifest.search_params and manifest.quality["sweep"]
    artifact = IndexArtifact.open(resolve_index_dir(root))
    try:
        vectors = artifact.take_vectors(np.arange(5))
        scores, rows = artifact.search(vectors, 3, {"efSearch": 32})
        assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]
        from retrieval.index import SearchParamsError

        with pytest.raises(SearchParamsError, match="nprobe"):
            artifact.search(vectors, 3, {"nprobe": 4})
    finally:
        artifact.close()


def test_a_failed_gate_leaves_nothing_in_milvus(noveleval: Path, tiny_model_dir: Path, milvus_uri: str, tmp_path: Path, capsys) -> None:
    client = connect(milvus_uri)
    before = set(client.list_collections())
    client.close()
    code = _build(noveleval, tmp_path / "bad", tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri,
                  "--factory", "IVF64,Flat", "--nprobe", "1", "--min-recall", "0.99", "--no-bm25")
    assert code == 2
    assert "quality gate failed" in capsys.readouterr().err
    client = connect(milvus_uri)
    try:
        assert set(client.list_collections()) == before
    finally:
        client.close()
    assert not (tmp_path / "bad" / CURRENT_FILE).exists()


def test_publish_rollback_and_prune_move_the_alias_and_drop_collections(
    noveleval: Path, tiny_model_dir: Path, milvus_uri: str, tmp_path: Path
) -> None:
    root = tmp_path / "swap"
    for _ in range(3):
        assert _build(noveleval, root, tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri, "--no-bm25") == 0
    versions = list_versions(root)
    refs = [v.manifest.milvus for v in versions]
    alias = refs[0].alias
    assert aliased_collection(milvus_uri, alias) == refs[2].collection
    assert rollback(root) == versions[1].name
    assert aliased_collection(milvus_uri, alias) == refs[1].collection
    assert index_main(["rollback", "--index-root", str(root), "--to", versions[2].name]) == 0
    assert aliased_collection(milvus_uri, alias) == refs[2].collection
    assert prune(root, keep=1) == [versions[0].name, versions[1].name]
    client = connect(milvus_uri)
    try:
        names = set(client.list_collections())
    finally:
        client.close()
    assert refs[2].collection in names and refs[0].collection not in names and refs[1].collection not in names


def test_reindex_of_a_milvus_version_writes_a_new_collection(
    roots: dict[str, Path], noveleval: Path, tiny_model_dir: Path, milvus_uri: str, tmp_path: Path
) -> None:
    import shutil

    from index_build.reindex_cli import main as reindex_main

    root = tmp_path / "reindex"
    assert _build(noveleval, root, tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri) == 0
    old = read_manifest(resolve_index_dir(root))
    changes = tmp_path / "changes.jsonl"
    first = (resolve_index_dir(root) / "docids.txt").read_text().split("\n")[0]
    changes.write_text(json.dumps({"op": "upsert", "docid": "milvus-new", "title": "Vectors", "text": "in a Milvus collection"})
                       + "\n" + json.dumps({"op": "delete", "docid": first}) + "\n")
    assert reindex_main(["--index-root", str(root), "--changes", str(changes), "--gate-queries", "50"]) == 0
    new_dir = resolve_index_dir(root)
    new = read_manifest(new_dir)
    assert new.backend == "milvus" and new.parent == old_version_name(root, old)
    assert new.milvus.collection != old.milvus.collection
    assert aliased_collection(milvus_uri, new.milvus.alias) == new.milvus.collection
    assert new.count == old.count and new.quality["recall_at_k"] == 1.0 and new.lexical is not None
    retriever = Retriever.open(root)
    try:
        vector = retriever.index.take_vectors(np.asarray([new.count - 1]))
        hit = retriever.search_vectors(vector, 1)[0][0]
        assert hit.docid == "milvus-new"
        assert first not in retriever.index.docids
        assert [h.docid for h in retriever.search(["Milvus collection"], top_k=1, mode="bm25")[0]] == ["milvus-new"]
    finally:
        retriever.close()
    shutil.rmtree(root)


def old_version_name(root: Path, manifest) -> str:
    return next(v.name for v in list_versions(root) if v.manifest and v.manifest.milvus.collection == manifest.milvus.collection)


def test_the_service_serves_a_milvus_version_and_swaps_to_another(
    roots: dict[str, Path], noveleval: Path, tiny_model_dir: Path, milvus_uri: str
) -> None:
    from service.app import create_app
    from service.settings import Settings

    root = roots["milvus"]
    version = resolve_index_dir(root).name
    settings = Settings(index=root, torch_threads=1, admin_api_key="k" * 32, access_log=False)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.05)
        first = client.post("/search", json={"query": "a detective story", "top_k": 5})
        assert first.status_code == 200, first.text
        index_info = client.get("/info").json()["index"]
        assert index_info["backend"] == "milvus"
        quality = index_info["build_quality"]
        assert quality["recall_at_k"] == 1.0 and quality["exact_family"] is True  # the gate ran through Milvus
        assert _build(noveleval, root, tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri) == 0
        swapped = client.post("/admin/reload", headers={"X-API-Key": "k" * 32})
        assert swapped.status_code == 200 and swapped.json()["status"] == "swapped", swapped.text
        second = client.post("/search", json={"query": "a detective story", "top_k": 5})
        assert second.status_code == 200
        assert second.json()["index_version"] != first.json()["index_version"] == version
        assert [h["docid"] for h in second.json()["hits"]] == [h["docid"] for h in first.json()["hits"]]
    assert sorted(os.listdir(root / VERSIONS_DIR))[-1] == resolve_index_dir(root).name


def test_milvus_backend_needs_a_uri_and_a_supported_family(noveleval: Path, tiny_model_dir: Path, milvus_uri: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _build(noveleval, tmp_path / "a", tiny_model_dir, "--index-backend", "milvus")
    assert exit_info.value.code == 2 and "--milvus-uri" in capsys.readouterr().err
    assert _build(noveleval, tmp_path / "b", tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", milvus_uri,
                  "--factory", "IVF16,PQ4") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not available on the milvus backend" in err and "\n" not in err
    assert _build(noveleval, tmp_path / "c", tiny_model_dir, "--index-backend", "milvus", "--milvus-uri", "http://127.0.0.1:1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Milvus" in err


def test_connect_retries_a_refused_channel_then_gives_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import pymilvus

    from retrieval import milvus_index

    calls: list[str] = []

    class Flaky:
        def __init__(self, uri: str, timeout: float) -> None:
            calls.append(uri)
            if len(calls) < 2 or "down" in uri:
                raise RuntimeError("Fail connecting to server\nsecond line")

    monkeypatch.setattr(pymilvus, "MilvusClient", Flaky)
    monkeypatch.setattr(milvus_index, "CONNECT_PAUSE_S", 0.0)
    assert isinstance(milvus_index.connect("http://127.0.0.1:1"), Flaky) and len(calls) == 2
    calls.clear()
    with pytest.raises(milvus_index.MilvusError, match=r"^cannot connect to Milvus at http://down:1: Fail connecting to server$"):
        milvus_index.connect("http://down:1")
    assert len(calls) == milvus_index.CONNECT_ATTEMPTS
