"""End to end on real NovelEval text with the tiny model: build-index CLI -> service -> evaluate CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_build.cli import main as build_main
from retrieval.datasets import iter_corpus
from retrieval.errors import ArtifactMismatchError
from evaluation.evaluate import main as evaluate_main
from retrieval.index_versions import current_version, resolve_index_dir
from retrieval.retriever import Retriever
from service.__main__ import main as serve_main
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("indexes") / "noveleval"
    code = build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def client(index_root: Path, wait_until_ready):
    with TestClient(create_app(Settings(index=index_root, torch_threads=1))) as test_client:
        wait_until_ready(test_client.get)  # the index loads in the background; /readyz says when
        yield test_client


def test_build_publishes_a_complete_version(index_root: Path, noveleval: Path, tiny_model_dir: Path) -> None:
    version = current_version(index_root)
    manifest = json.loads((index_root / "versions" / version / "manifest.json").read_text())
    assert manifest["count"] == 420 and manifest["dimension"] == 32 and manifest["factory"] == "Flat"
    assert manifest["encoder"]["source"] == str(tiny_model_dir)
    assert manifest["build"]["passages_per_s"] > 0
    assert not list((index_root / "staging").iterdir())  # nothing half-built left behind
    # --if-missing leaves the published version alone
    assert build_main(["--corpus", str(noveleval), "--index-root", str(index_root), "--if-missing"]) == 0
    assert current_version(index_root) == version


def test_search_returns_ranked_noveleval_hits(client: TestClient) -> None:
    response = client.post("/search", json={"query": "Who produced Spider-Man: Across the Spider-Verse?", "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(h["score"] >= n["score"] for h, n in zip(hits, hits[1:]))
    docids = {p.docid: p for p in iter_corpus(Path(client.app.state.runtime.holder.current.retriever.index.manifest.build["corpus"]))}
    for hit in hits:
        assert hit["docid"] in docids and hit["text"] == docids[hit["docid"]].text
    assert body["index_version"] and len(body["model"]) == 12 and body["took_ms"] > 0


def test_search_without_text(client: TestClient) -> None:
    hits = client.post("/search", json={"query": "film", "top_k": 2, "return_text": False}).json()["hits"]
    assert len(hits) == 2 and "text" not in hits[0]


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "non-whitespace"),
        ({}, "exactly one of `query` (one query) or `queries`"),
        ({"query": "film", "top_k": 0}, "top_k"),
        ({"query": "film", "top_k": 101}, "top_k"),
        ({"query": "film", "top_k": "many"}, "top_k"),
        ({"query": "film", "topk": 3}, "topk"),
    ],
)
def test_bad_requests_get_readable_422(client: TestClient, body: dict, fragment: str) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["type"] == "validation_error" and fragment in error["error"]
    assert isinstance(error["detail"], list) and error["detail"]


def test_malformed_json_is_422(client: TestClient) -> None:
    response = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["type"] == "validation_error"


def test_unknown_route_uses_error_body(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["type"] == "http_error"


def test_index_from_another_encoder_is_refused(index_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other"))
    config = json.loads((other / "encoder_config.json").read_text())
    config["max_query_length"] = 16
    config["fingerprint"] = ""  # a legitimately different encoder: new settings, fresh fingerprint
    (other / "encoder_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactMismatchError, match="was built by encoder"):
        Retriever.open(index_root, encoder_path=other)
    with TestClient(create_app(Settings(index=index_root, encoder_path=str(other), torch_threads=1))) as client:
        deadline = time.monotonic() + 30
        while client.app.state.runtime.holder.loading:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ready = client.get("/readyz")  # the service stays up, says why it cannot serve, and serves nothing
        assert ready.status_code == 503 and "was built by encoder" in ready.json()["error"]
        assert client.post("/search", json={"query": "film"}).status_code == 503


def test_evaluate_cli_bm25_and_dense(index_root: Path, noveleval: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval.json"
    code = evaluate_main(
        ["--dataset", str(noveleval), "--split", "test", "--retriever", "bm25", "--retriever", "dense",
         "--index", str(index_root), "--output", str(out), "--run-dir", str(tmp_path / "runs"), "--threads", "1"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["queries"] == 21 and set(report["systems"]) == {"bm25", "dense"}
    bm25 = report["systems"]["bm25"]["metrics"]
    assert bm25["nDCG@10"] > 0.55  # real lexical matching on real text
    dense = report["systems"]["dense"]["metrics"]
    # The tiny random encoder ranks at about chance; its figures are pinned (seeded model, exact
    # search), so any change in how queries or passages are encoded or searched shows up here.
    assert dense["nDCG@10"] == pytest.approx(0.0705, abs=0.002) and dense["MRR@10"] == pytest.approx(0.1315, abs=0.002)
    assert dense["R@1000"] == pytest.approx(1.0)  # depth covers all 420
    assert "nDCG@10" in capsys.readouterr().out
    assert len((tmp_path / "runs" / "dense.trec").read_text().splitlines()) == 21 * 420


@pytest.mark.parametrize(
    "main, argv, fragment",
    [
        (evaluate_main, ["--dataset", "/nonexistent/data"], "/nonexistent/data"),
        (build_main, ["--corpus", "/nonexistent/corpus.jsonl", "--index-root", "{tmp}/r"], "file not found"),
        (build_main, ["--corpus", "{noveleval}", "--index-root", "{tmp}/r", "--factory", "Bogus"], "invalid FAISS factory"),
    ],
)
def test_cli_user_errors_are_one_line(main, argv, fragment, tmp_path: Path, noveleval: Path, capsys) -> None:
    argv = [a.format(tmp=tmp_path, noveleval=noveleval) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "r" / "CURRENT").exists()


def test_serve_without_an_index_exits_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MD2PR_INDEX", str(tmp_path / "missing"))
    assert serve_main([]) == 2
    assert "no such index" in capsys.readouterr().err


def test_resolve_index_dir_accepts_a_version_directory(index_root: Path) -> None:
    directory = resolve_index_dir(index_root)
    assert resolve_index_dir(directory) == directory
