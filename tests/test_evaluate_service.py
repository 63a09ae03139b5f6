"""``md2pr-evaluate --retriever service``: a running service scored like in-process retrieval.

The service is the real app (``TestClient``, an ``httpx.Client``) over a tiny NovelEval index
built with the real CLI; protocol corner cases (429, a swap mid-run, error bodies) use
``httpx.MockTransport`` with an injected ``sleep``, so nothing waits on a clock.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from index_build.cli import main as build_main
from evaluation import service_client
from evaluation.service_client import clamp_depth, service_rankings
from retrieval.datasets import load_dataset
from retrieval.errors import RetrievalError
from evaluation.evaluate import dense_rankings, main as evaluate_main, to_run
from retrieval.index_versions import CURRENT_FILE
from retrieval.metrics import evaluate_run
from retrieval.retriever import Retriever
from service.app import create_app
from service.schemas import MAX_TOP_K
from service.settings import Settings


# ------------------------------------------------------------------------------ a live app
@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path, one_thread) -> Path:
    """NovelEval indexed by the tiny encoder (dense + the BM25 side index), as tests/test_service.py does."""
    root = tmp_path_factory.mktemp("eval-service") / "noveleval"
    argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress", "--threads", "1"]
    assert build_main(argv) == 0
    return root


def settings_for(root: Path) -> Settings:
    return Settings(index=root, torch_threads=1, access_log=False)


@pytest.fixture(scope="module")
def client(index_root: Path) -> Iterator[TestClient]:
    """The started app; readiness is left to :func:`service_rankings`, which waits for it."""
    with TestClient(create_app(settings_for(index_root))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def dataset(noveleval: Path):
    return load_dataset(noveleval, "test")


def test_the_client_clamps_to_the_services_top_k_limit() -> None:
    # one definition (retrieval.wire), read by the service and the client alike
    assert clamp_depth(MAX_TOP_K + 1) == MAX_TOP_K and clamp_depth(MAX_TOP_K) == MAX_TOP_K


def test_service_rankings_equal_in_process_dense(client: TestClient, dataset, index_root: Path) -> None:
    # batch_size 8: 21 queries in three requests, so batching and the order of results both count
    ranked, config = service_rankings(client, dataset.queries, 100, batch_size=8)
    expected, _ = dense_rankings(dataset, 100, index_root, None)
    assert list(ranked) == list(dataset.queries)
    for qid in dataset.queries:
        assert [d for d, _ in ranked[qid]] == [d for d, _ in expected[qid]], qid
        assert [s for _, s in ranked[qid]] == pytest.approx([s for _, s in expected[qid]], abs=1e-5)
    over_http = evaluate_run(dataset.qrels, to_run(ranked))
    in_process = evaluate_run(dataset.qrels, to_run(expected))
    assert over_http == pytest.approx(in_process, abs=1e-9)
    retriever = Retriever.open(index_root)
    try:
        fingerprint = retriever.encoder.fingerprint
    finally:
        retriever.close()
    assert config == {
        "service_url": "http://testserver",
        "mode": "dense",
        "index_version": (index_root / CURRENT_FILE).read_text().strip(),
        "model": {"fingerprint": fingerprint, "source": config["model"]["source"]},
        "family": "Flat",
        "count": 420,
        "depth": 100,
        "requested_depth": 100,
        "batch_size": 8,
        "retries": 0,
    }


def test_bm25_mode_equals_in_process_bm25(client: TestClient, dataset, index_root: Path) -> None:
    ranked, config = service_rankings(client, dataset.queries, 20, mode="bm25")
    retriever = Retriever.open(index_root)
    try:
        expected = retriever.search_run(dataset.queries, 20, mode="bm25")
    finally:
        retriever.close()
    assert {q: [d for d, _ in hits] for q, hits in ranked.items()} == {q: list(docs) for q, docs in expected.items()}
    assert config["mode"] == "bm25" and config["batch_size"] == 32


def test_depth_above_the_cap_is_clamped_and_recorded(client: TestClient, dataset, caplog) -> None:
    few = dict(list(dataset.queries.items())[:3])
    with caplog.at_level("WARNING", logger=service_client.__name__):
        ranked, config = service_rankings(client, few, 1000)
    assert config["depth"] == 100 and config["requested_depth"] == 1000
    assert [len(hits) for hits in ranked.values()] == [100, 100, 100]  # 420 passages: the cap, not the corpus, cut
    assert "depth 1000 is above the service's top_k limit 100" in caplog.text


# ------------------------------------------------------------------------------- the CLI
@pytest.fixture()
def app_factory(monkeypatch: pytest.MonkeyPatch, index_root: Path) -> list[str]:
    """``open_client`` returns a fresh, unstarted app: the CLI's ``with`` starts it and
    ``service_rankings`` waits through its 503s until the index is loaded."""
    urls: list[str] = []

    def open_client(url: str, timeout_s: float = 60.0) -> httpx.Client:
        urls.append(url)
        return TestClient(create_app(settings_for(index_root)), base_url=url)

    monkeypatch.setattr(service_client, "open_client", open_client)
    return urls


def test_cli_clamps_depth_1000_and_leaves_out_deeper_measures(
    app_factory: list[str], noveleval: Path, index_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(noveleval), "--index", str(index_root), "--retriever", "dense", "--retriever", "service",
            "--service-url", "http://127.0.0.1:8000", "--output", str(out), "--threads", "1"]
    assert evaluate_main(argv) == 0  # default --depth 1000
    assert app_factory == ["http://127.0.0.1:8000"]
    report = json.loads(out.read_text())
    dense, service = report["systems"]["dense"], report["systems"]["service"]
    assert report["depth"] == 1000
    assert service["config"]["depth"] == 100 and service["config"]["requested_depth"] == 1000
    assert service["config"]["service_url"] == "http://127.0.0.1:8000"
    assert service["omitted_metrics"] == ["R@1000"] and "R@1000" not in service["metrics"]
    assert "R@1000" in dense["metrics"] and "omitted_metrics" not in dense
    # every measure the service could answer equals the in-process one (top 100 are the same)
    assert service["metrics"] == pytest.approx({k: v for k, v in dense["metrics"].items() if k != "R@1000"}, abs=1e-9)


def test_cli_names_non_dense_modes_and_keeps_all_measures_within_the_cap(
    app_factory: list[str], noveleval: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(noveleval), "--retriever", "service", "--service-url", "http://testserver",
            "--service-mode", "hybrid", "--depth", "100", "--output", str(out), "--threads", "1"]
    assert evaluate_main(argv) == 0
    systems = json.loads(out.read_text())["systems"]
    assert list(systems) == ["service-hybrid"]
    # at --depth 100, R@1000 would be R@100 under a wrong name: left out, as for any system
    assert systems["service-hybrid"]["omitted_metrics"] == ["R@1000"]
    assert set(systems["service-hybrid"]["metrics"]) == {"nDCG@10", "MRR@10", "R@50", "R@100"}
    assert systems["service-hybrid"]["config"]["mode"] == "hybrid"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_unreachable_service_is_one_line_exit_2(noveleval: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # a proxy would answer in the service's place
    url = f"http://127.0.0.1:{_closed_port()}"
    code = evaluate_main(["--dataset", str(noveleval), "--retriever", "service", "--service-url", url, "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"error: the service is not reachable at {url} (is it running?)"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--retriever", "service"], "--retriever service needs --service-url"),
        (["--retriever", "bm25", "--service-url", "http://x"], "--service-url needs --retriever service"),
        (["--retriever", "service", "--service-url", "localhost:8000"], "must start with http://"),
    ],
)
def test_cli_flag_mistakes_are_usage_errors(argv: list[str], fragment: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


# ---------------------------------------------------------------------- protocol corners
INFO = {
    "model": {"fingerprint": "ab" * 32, "source": "models/tiny"},
    "index": {"version": "v1", "family": "Flat", "count": 3, "modes": ["dense", "bm25", "hybrid"]},
    "serving": {"max_queries_per_request": 2},
}


def fake_service(search: Callable[[int, dict], httpx.Response], readyz: list[int] | None = None) -> tuple[httpx.Client, list[dict]]:
    """A client whose transport plays the service: ``search(call number, body)`` answers ``/search``."""
    bodies: list[dict] = []
    ready = list(readyz or [])

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            status = ready.pop(0) if ready else 200
            return httpx.Response(status, json={"error": "index is loading"} if status == 503 else {"status": "ready"})
        if request.url.path == "/info":
            return httpx.Response(200, json=INFO)
        body = json.loads(request.content)
        bodies.append(body)
        return search(len(bodies), body)

    return httpx.Client(transport=httpx.MockTransport(handle), base_url="http://svc:8000"), bodies


def answer(body: dict, version: str = "v1") -> httpx.Response:
    results = [
        {"query": q, "hits": [{"docid": f"{q}-{r}", "score": 1.0 / r, "rank": r} for r in range(1, body["top_k"] + 1)]}
        for q in body["queries"]
    ]
    return httpx.Response(200, json={"results": results, "index_version": version, "model": "ab" * 6, "took_ms": 1.0})


QUERIES = {"q1": "one", "q2": "two", "q3": "three"}


def test_429_is_retried_after_retry_after() -> None:
    def search(call: int, body: dict) -> httpx.Response:
        if call == 1:
            return httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "queue full", "type": "overloaded"})
        return answer(body)

    waits: list[float] = []
    client, bodies = fake_service(search, readyz=[503, 503])
    ranked, config = service_rankings(client, QUERIES, 2, sleep=waits.append)
    assert waits[-1] == 2.0 and len(waits) == 3  # two readiness polls (Retry-After absent: short waits), one 429
    assert config["retries"] == 1 and config["batch_size"] == 2  # the service's per-request limit wins over 32
    assert [b["queries"] for b in bodies] == [["one", "two"], ["one", "two"], ["three"]]
    assert all(b["top_k"] == 2 and b["mode"] == "dense" and b["return_text"] is False for b in bodies)
    assert ranked == {q: [(f"{t}-1", 1.0), (f"{t}-2", 0.5)] for q, t in QUERIES.items()}


def test_429_without_end_fails_after_bounded_attempts() -> None:
    overloaded = httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "queue full", "type": "overloaded"})
    client, bodies = fake_service(lambda call, body: overloaded)
    with pytest.raises(RetrievalError, match=r"answered 429: queue full$"):
        service_rankings(client, QUERIES, 2, max_attempts=3, sleep=lambda s: None)
    assert len(bodies) == 3


def test_a_changed_index_version_fails_the_run() -> None:
    client, _ = fake_service(lambda call, body: answer(body, "v1" if call == 1 else "v2"))
    with pytest.raises(RetrievalError, match=r"changed index version or model during the evaluation \(v1/abababababab "
                                             r"at the start, v2/abababababab for queries 3-3 of 3\)"):
        service_rankings(client, QUERIES, 2, sleep=lambda s: None)


def test_other_errors_name_the_status_and_the_services_message() -> None:
    refused = httpx.Response(422, json={"error": "queries.0: query must contain non-whitespace text", "type": "validation_error"})
    client, _ = fake_service(lambda call, body: refused)
    with pytest.raises(RetrievalError) as info:
        service_rankings(client, QUERIES, 2)
    assert str(info.value) == (
        "POST http://svc:8000/search (queries 1-2 of 3) answered 422: queries.0: query must contain non-whitespace text"
    )


def test_a_service_that_stays_unready_times_out() -> None:
    client, _ = fake_service(answer, readyz=[503] * 1000)
    with pytest.raises(RetrievalError, match="was not ready within 0 s: index is loading"):
        service_rankings(client, QUERIES, 2, ready_timeout_s=0, sleep=lambda s: None)


def test_a_mode_the_version_lacks_is_refused_before_searching() -> None:
    INFO_DENSE = {**INFO, "index": {**INFO["index"], "modes": ["dense"]}}

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path != "/search"
        return httpx.Response(200, json=INFO_DENSE if request.url.path == "/info" else {"status": "ready"})

    client = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://svc:8000")
    with pytest.raises(RetrievalError, match="has no hybrid mode"):
        service_rankings(client, QUERIES, 2, mode="hybrid")
