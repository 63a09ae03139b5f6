"""Hybrid retrieval end to end: the BM25 side index in a version, re-indexing, and the service modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_build.cli import main as build_main
from index_build.reindex_cli import main as reindex_main
from retrieval.fusion import FusionConfig
from retrieval.retriever import Retriever, UnsupportedModeError
from service.app import create_app
from service.settings import Settings

NEW_DOC = {"op": "upsert", "docid": "new-1", "title": "Zyxwvut", "text": "quokkas quokkas on rottnest island"}


def _build(root: Path, corpus: Path, model: Path, *extra: str) -> None:
    argv = ["--corpus", str(corpus), "--index-root", str(root), "--encoder", str(model), "--no-progress", "--threads", "1"]
    assert build_main([*argv, *extra]) == 0


@pytest.fixture(scope="module")
def hybrid_root(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("hybrid") / "noveleval"
    _build(root, noveleval, tiny_model_dir)
    return root


def test_a_version_carries_its_bm25_side_index(hybrid_root: Path) -> None:
    retriever = Retriever.open(hybrid_root)
    try:
        lexical = retriever.index.manifest.lexical
        assert lexical is not None and lexical.count == 420 and lexical.config["k1"] == 0.9
        assert any(name.startswith("bm25/") for name in retriever.index.manifest.files)
        assert retriever.modes == ("dense", "bm25", "hybrid")
        query = "Spider-Man Across the Spider-Verse sequel"
        bm25 = retriever.search([query], 5, mode="bm25")[0]
        assert bm25 and all(h.bm25_score is not None and h.dense_score is None for h in bm25)
        hybrid = retriever.search([query], 5, mode="hybrid", return_text=True)[0]
        assert [h.rank for h in hybrid] == list(range(1, len(hybrid) + 1)) and hybrid[0].text
        # all weight on BM25: hybrid keeps BM25's order
        lexical_only = retriever.search([query], 5, mode="hybrid", fusion=FusionConfig(dense_weight=0.0))[0]
        assert [h.docid for h in lexical_only] == [h.docid for h in bm25]
    finally:
        retriever.close()


def test_upserts_and_deletes_reach_both_sides(hybrid_root: Path, tmp_path: Path) -> None:
    before = Retriever.open(hybrid_root)
    victim = before.search(["Spider-Man"], 1, mode="bm25")[0][0].docid
    before.close()
    changes = tmp_path / "changes.jsonl"
    replaced = {"op": "upsert", "docid": "0-1", "title": "", "text": "platypus venom spurs"}
    changes.write_text("\n".join(json.dumps(c) for c in [NEW_DOC, replaced, {"op": "delete", "docid": victim}]) + "\n")
    assert reindex_main(["--index-root", str(hybrid_root), "--changes", str(changes), "--threads", "1"]) == 0
    after = Retriever.open(hybrid_root)
    try:
        assert len(after.bm25) == after.index.manifest.count == 420  # +1 new, -1 deleted, 1 replaced
        assert after.index.manifest.lexical.count == 420
        for mode in ("bm25", "hybrid", "dense"):
            for query in ("quokkas rottnest", "platypus venom", "Spider-Man"):
                assert victim not in {h.docid for h in after.search([query], 50, mode=mode)[0]}
        assert after.search(["quokkas rottnest"], 1, mode="bm25")[0][0].docid == "new-1"
        assert after.search(["platypus venom"], 1, mode="bm25", return_text=True)[0][0].text == "platypus venom spurs"
    finally:
        after.close()


@pytest.fixture(scope="module")
def client(hybrid_root: Path, wait_until_ready):
    with TestClient(create_app(Settings(index=hybrid_root, torch_threads=1))) as test_client:
        wait_until_ready(test_client.get)
        yield test_client


def test_service_modes_and_component_scores(client: TestClient) -> None:
    info = client.get("/info").json()["index"]
    assert info["modes"] == ["dense", "bm25", "hybrid"] and info["fusion"]["method"] == "zscore"
    assert info["lexical"]["config"]["stopwords"] == "en"
    body = {"query": "Spider-Verse sequel", "top_k": 5, "mode": "hybrid", "include_scores": True}
    hits = client.post("/search", json=body).json()["hits"]
    assert len(hits) == 5 and all("dense_score" in h or "bm25_score" in h for h in hits)
    plain = client.post("/search", json={**body, "include_scores": False}).json()["hits"]
    assert [h["docid"] for h in plain] == [h["docid"] for h in hits] and "dense_score" not in plain[0]
    lexical = client.get("/search", params={"q": "Spider-Verse sequel", "mode": "bm25", "top_k": 3}).json()["hits"]
    assert len(lexical) == 3
    weighted = {**body, "fusion": {"dense_weight": 0, "bm25_weight": 1}}
    assert [h["docid"] for h in client.post("/search", json=weighted).json()["hits"]][:3] == [h["docid"] for h in lexical]
    metrics = client.get("/metrics").text
    assert 'md2pr_search_queries_total{mode="hybrid"}' in metrics and 'md2pr_search_queries_total{mode="bm25"}' in metrics


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"mode": "semantic"}, 422, "mode"),
        ({"mode": "hybrid", "fusion": {"dense_weight": 0, "bm25_weight": 0}}, 422, "cannot both be 0"),
        ({"mode": "hybrid", "fusion": {"dense_weight": 11}}, 422, "dense_weight"),
        ({"mode": "hybrid", "fusion": {"bm25_depth": 0}}, 422, "bm25_depth"),
        ({"mode": "hybrid", "fusion": {"alpha": 1}}, 422, "alpha"),
    ],
)
def test_bad_mode_requests_are_422(client: TestClient, body: dict, status: int, fragment: str) -> None:
    response = client.post("/search", json={"query": "film", **body})
    assert response.status_code == status and fragment in response.json()["error"]


def test_a_dense_only_version_refuses_lexical_modes(tmp_path: Path, noveleval: Path, tiny_model_dir: Path, wait_until_ready) -> None:
    root = tmp_path / "dense-only"
    _build(root, noveleval, tiny_model_dir, "--no-bm25")
    retriever = Retriever.open(root)
    assert retriever.modes == ("dense",)
    with pytest.raises(UnsupportedModeError, match="needs a lexical"):
        retriever.search(["film"], 3, mode="hybrid")
    retriever.close()
    with TestClient(create_app(Settings(index=root, torch_threads=1))) as client:
        wait_until_ready(client.get)
        assert client.get("/info").json()["index"]["modes"] == ["dense"]
        response = client.post("/search", json={"query": "film", "mode": "bm25"})
        assert response.status_code == 422
        error = response.json()
        assert error["type"] == "invalid_search_mode" and "needs a lexical (BM25) index" in error["error"]
        assert error["detail"] == {"modes": ["dense"]}
        assert client.post("/search", json={"query": "film"}).status_code == 200


def test_fit_fusion_publishes_a_new_version_with_the_weights(tmp_path: Path, noveleval: Path, tiny_model_dir: Path, capsys) -> None:
    from index_build.fit_fusion import main as fit_main
    from retrieval.index_versions import current_version

    root = tmp_path / "fit"
    _build(root, noveleval, tiny_model_dir)
    before = current_version(root)
    out = tmp_path / "fit.json"
    # NovelEval has a single judged split; "all" stands in for a dev split here
    assert fit_main(["--index-root", str(root), "--dataset", str(noveleval), "--split", "all", "--steps", "4",
                     "--output", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert len(report["grid"]) == 5 and report["published"] == current_version(root) != before
    assert report["model"] == str(tiny_model_dir) and report["bm25"]["stemmer"] == "english"  # what was balanced
    retriever = Retriever.open(root)
    try:
        assert retriever.fusion.to_dict() == report["chosen"]
        assert retriever.index.manifest.parent == before
        assert retriever.index.manifest.build["fusion_fit"]["split"] == "all"
        assert retriever.search(["film"], 3, mode="hybrid")  # the linked files serve as before
    finally:
        retriever.close()
    # fitting on test is refused, with one line, and nothing is published
    assert fit_main(["--index-root", str(root), "--dataset", str(noveleval), "--split", "test"]) == 2
    assert "refusing to fit fusion weights on 'test'" in capsys.readouterr().err
    assert current_version(root) == report["published"]
    # choosing on the queries about documents the encoder was not trained on: NovelEval's queries
    # each have their own passages, so every dev query is unseen by the fit queries
    assert fit_main(["--index-root", str(root), "--dataset", str(noveleval), "--split", "all:dev",
                     "--unseen-from", "all:fit", "--steps", "4", "--no-publish", "--output", str(out),
                     "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["unseen_from"] == "all:fit" and report["objective"] == "nDCG@10 mean"
    assert all(g["nDCG@10 unseen"] == pytest.approx(g["nDCG@10"]) for g in report["grid"])
    # a test split is refused there too, and a split seen by itself leaves no unseen query
    assert fit_main(["--index-root", str(root), "--dataset", str(noveleval), "--split", "all:dev", "--unseen-from", "test"]) == 2
    assert "refusing to fit fusion weights on 'test'" in capsys.readouterr().err
    assert fit_main(["--index-root", str(root), "--dataset", str(noveleval), "--split", "all", "--unseen-from", "all",
                     "--no-publish", "--threads", "1"]) == 2
    assert "no query of all has only unseen positives" in capsys.readouterr().err
