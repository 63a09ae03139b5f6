"""The /search service: API shapes, every error code, readiness, overload, batching, metrics,
logging, admin auth, hot index swaps and the OpenAPI contract.

Real NovelEval text, the tiny random encoder, small index roots built with the real CLI.
"The model is busy" is made with events that hold the compute thread, never with sleeps or
timings, so every assertion is deterministic.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_build.cli import main as build_main
from retrieval.index import FAISS_FILE, MANIFEST_FILE
from retrieval.index_versions import CURRENT_FILE, VERSIONS_DIR
from retrieval.retriever import Retriever
from service.app import create_app
from service.middleware import server_timing
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "service_openapi.json"
KEY = "s3cret-admin-key"
QUERY = "Who produced Spider-Man: Across the Spider-Verse?"


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def index_root(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    """An index root with two published versions of NovelEval (CURRENT names the second).

    The second is a copy of the first under another name (building twice costs seconds and
    proves nothing more): a swap between them is still a real load of another directory.
    """
    root = tmp_path_factory.mktemp("service-indexes") / "noveleval"
    argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"]
    assert build_main(argv) == 0
    first = (root / CURRENT_FILE).read_text().strip()
    shutil.copytree(root / VERSIONS_DIR / first, root / VERSIONS_DIR / f"{first}-copy")
    point_current(root, f"{first}-copy")
    return root


@pytest.fixture(scope="module")
def versions(index_root: Path) -> list[str]:
    names = sorted(p.name for p in (index_root / VERSIONS_DIR).iterdir())
    assert len(names) == 2
    return names


def point_current(root: Path, version: str) -> None:
    """Switch CURRENT the way publishing does (temp file + os.replace)."""
    tmp = root / f".{CURRENT_FILE}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT_FILE)


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def settings_for(root: Path, **overrides) -> Settings:
    values = {"index": root, "torch_threads": 1, "admin_api_key": KEY, "access_log": False, **overrides}
    return Settings(**values)


@contextmanager
def serving(settings: Settings, wait_ready: bool = True, **client_kwargs) -> Iterator[TestClient]:
    """A started app (lifespan run); by default waits until it is ready."""
    with TestClient(create_app(settings), **client_kwargs) as client:
        if wait_ready:
            wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        yield client


class Gate:
    """Holds the compute thread inside the encoder until released (``entered`` is set when held)."""

    def __init__(self, client: TestClient) -> None:
        self.encoder = client.app.state.runtime.holder.current.retriever.encoder
        self.original = self.encoder.encode_queries
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def __enter__(self) -> "Gate":
        def held(texts, *args, **kwargs):
            self.calls.append(len(texts))
            self.entered.set()
            assert self.release.wait(30), "gate never released"
            return self.original(texts, *args, **kwargs)

        self.encoder.encode_queries = held
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        del self.encoder.encode_queries  # back to the class method


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        got = series[series.find("{") + 1 : -1] if "{" in series else ""
        if ",".join(sorted(got.split(","))) == want or (not labels and not got):
            return float(value)
    return 0.0


@pytest.fixture(scope="module")
def client(index_root: Path) -> Iterator[TestClient]:
    with serving(settings_for(index_root)) as test_client:
        yield test_client


# ---------------------------------------------------------------------------------- searching
def test_single_query_shape_and_ranking(client: TestClient, index_root: Path) -> None:
    response = client.post("/search", json={"query": QUERY, "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"query", "hits", "index_version", "model", "took_ms"}
    assert body["query"] == QUERY and [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(body["hits"], body["hits"][1:]))
    assert all(h["text"] for h in body["hits"])
    assert body["index_version"] == (index_root / CURRENT_FILE).read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{12}", body["model"]) and body["took_ms"] > 0
    assert {"queue", "encode", "search"} <= {
        part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")
    }


def test_batch_equals_single_queries_and_in_process_search(client: TestClient, index_root: Path) -> None:
    queries = [QUERY, "box office of the film", "who voices Miles Morales", "release date"]
    batch = client.post("/search", json={"queries": queries, "top_k": 7, "return_text": False}).json()
    assert [r["query"] for r in batch["results"]] == queries
    retriever = Retriever.open(index_root)
    try:
        expected = retriever.search(queries, 7)
    finally:
        retriever.close()
    for result, hits in zip(batch["results"], expected):
        assert [h["docid"] for h in result["hits"]] == [h.docid for h in hits]
        assert [h["score"] for h in result["hits"]] == pytest.approx([h.score for h in hits], abs=1e-5)
        assert all("text" not in h for h in result["hits"])
    single = client.post("/search", json={"query": queries[2], "top_k": 3}).json()
    assert [h["docid"] for h in single["hits"]] == [h["docid"] for h in batch["results"][2]["hits"][:3]]


def test_get_search_for_quick_use(client: TestClient) -> None:
    body = client.get("/search", params={"q": QUERY, "top_k": 2, "return_text": "false"}).json()
    assert len(body["hits"]) == 2 and "text" not in body["hits"][0]
    posted = client.post("/search", json={"query": QUERY, "top_k": 2}).json()
    assert [h["docid"] for h in body["hits"]] == [h["docid"] for h in posted["hits"]]


def test_concurrent_requests_share_batches(index_root: Path) -> None:
    """Requests queued while the model is busy are answered by one encoder forward."""
    with serving(settings_for(index_root, batch_wait_ms=0)) as client, ThreadPoolExecutor(8) as pool:
        runtime = client.app.state.runtime
        with Gate(client) as gate:
            first = pool.submit(client.post, "/search", json={"query": QUERY, "top_k": 3})
            assert gate.entered.wait(30)
            rest = [
                pool.submit(client.post, "/search", json={"query": f"{QUERY} {i}", "top_k": 2 + i}) for i in range(5)
            ]
            wait_until(lambda: runtime.batcher.depth == 5, "5 queued queries")
            gate.release.set()
            responses = [first.result(30)] + [f.result(30) for f in rest]
        assert [r.status_code for r in responses] == [200] * 6
        assert [len(r.json()["hits"]) for r in responses[1:]] == [2, 3, 4, 5, 6]  # each its own top_k
        assert gate.calls == [1, 5]
        assert metric(client, "md2pr_batch_requests_count") == 2 and metric(client, "md2pr_batch_requests_sum") == 6
        assert metric(client, "md2pr_batch_queries_sum") == 6


def test_a_batch_mixes_requests_with_and_without_text_but_not_search_params(index_root: Path) -> None:
    with serving(settings_for(index_root)) as client, ThreadPoolExecutor(6) as pool:
        runtime = client.app.state.runtime
        with Gate(client) as gate:
            first = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            with_text = pool.submit(client.post, "/search", json={"query": QUERY, "top_k": 3})
            wait_until(lambda: runtime.batcher.depth == 1, "one queued query")
            without = pool.submit(client.post, "/search", json={"query": QUERY, "top_k": 3, "return_text": False})
            wait_until(lambda: runtime.batcher.depth == 2, "two queued queries")
            tuned = pool.submit(client.post, "/search", json={"query": QUERY, "search_params": {"efSearch": 64}})
            wait_until(lambda: runtime.batcher.depth == 3, "three queued queries")
            gate.release.set()
            text_hits, plain_hits = with_text.result(30).json()["hits"], without.result(30).json()["hits"]
            assert first.result(30).status_code == 200 and tuned.result(30).status_code == 422
        assert gate.calls == [1, 2, 1]  # text and no text together; other search_params in a batch of their own
        assert [h["docid"] for h in text_hits] == [h["docid"] for h in plain_hits]
        assert all(h["text"] for h in text_hits) and all("text" not in h and "title" not in h for h in plain_hits)


def test_batching_off_runs_one_request_per_forward(index_root: Path) -> None:
    with serving(settings_for(index_root, batch_max_queries=1)) as client, ThreadPoolExecutor(4) as pool:
        with Gate(client) as gate:
            first = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            rest = [pool.submit(client.post, "/search", json={"query": QUERY}) for _ in range(3)]
            wait_until(lambda: client.app.state.runtime.batcher.depth == 3, "3 queued queries")
            gate.release.set()
            assert all(f.result(30).status_code == 200 for f in [first, *rest])
        assert gate.calls == [1, 1, 1, 1]


# ----------------------------------------------------------------------------- the error codes
@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "non-whitespace"),
        ({}, "exactly one of `query`"),
        ({"query": "film", "queries": ["film"]}, "exactly one of `query`"),
        ({"queries": []}, "queries: List should have at least 1 item"),
        ({"queries": ["ok", " "]}, "queries.1: query must contain non-whitespace text"),
        ({"query": "film", "top_k": 0}, "top_k"),
        ({"query": "film", "top_k": 101}, "top_k"),
        ({"query": "film", "top_k": "many"}, "top_k"),
        ({"query": "film", "topk": 3}, "topk"),
        ({"query": "x" * 2049}, "at most 2048 characters"),
        ({"query": "film", "search_params": {"nprobe": 0}}, "search_params.nprobe"),
        ({"query": "film", "search_params": {"efSearch": 5000}}, "search_params.efSearch"),
        ({"query": "film", "search_params": {"path": "/etc/passwd"}}, "search_params.path"),
        ({"query": "film", "index": "/etc"}, "index"),
        ([1, 2], "body"),
        # strict types: no coercion of booleans, strings or floats into integers and booleans
        ({"query": "film", "top_k": True}, "top_k: Input should be a JSON integer, not a boolean"),
        ({"query": "film", "top_k": "5"}, "top_k: Input should be a JSON integer, not a string"),
        ({"query": "film", "top_k": 5.5}, "top_k: Input should be a valid integer, got a number with a fractional part"),
        ({"query": "film", "return_text": "yes"}, "return_text: Input should be a valid boolean"),
        ({"query": "film", "return_text": 1}, "return_text: Input should be a valid boolean"),
        ({"query": "film", "include_scores": "true"}, "include_scores: Input should be a valid boolean"),
        ({"query": "film", "search_params": {"nprobe": "8"}}, "search_params.nprobe: Input should be a JSON integer"),
        ({"query": "film", "fusion": {"dense_weight": True}}, "fusion.dense_weight: Input should be a valid number"),
        ({"query": "film", "fusion": {"bm25_depth": "50"}}, "fusion.bm25_depth: Input should be a JSON integer"),
        ({"query": "film", "fusion": {"dense_depth": False}}, "fusion.dense_depth: Input should be a JSON integer"),
        # optional fields are omitted, never null (as the schema says)
        ({"queries": ["film"], "search_params": None}, "search_params: may be omitted but not null"),
        ({"queries": ["film"], "query": None}, "query: may be omitted but not null"),
        ({"query": "film", "fusion": None}, "fusion: may be omitted but not null"),
        ({"query": "film", "search_params": {"nprobe": None}}, "search_params.nprobe: may be omitted but not null"),
        # blank: whitespace, control and format characters only
        ({"query": "\u0000"}, "query: query must contain non-whitespace text"),
        ({"query": "\u0000\u0001\u007f\u0085\u200b\u2060\ufeff \t\u00a0"}, "query: query must contain non-whitespace text"),
        ({"queries": ["film", "\u200d\u00ad"]}, "queries.1: query must contain non-whitespace text"),
    ],
)
def test_bad_bodies_get_readable_422(client: TestClient, body: object, fragment: str) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"error", "type", "detail"}
    assert error["type"] == "validation_error" and fragment in error["error"], error["error"]
    assert isinstance(error["detail"], list) and error["detail"]


def test_lone_surrogate_and_malformed_json_are_422(client: TestClient) -> None:
    response = client.post("/search", content=b'{"query": "\\ud800"}', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "unicode" in response.json()["error"]
    response = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["type"] == "validation_error"


def test_integer_fields_take_json_integers_and_number_fields_json_numbers(client: TestClient) -> None:
    body = {"query": QUERY, "top_k": 3, "return_text": False, "include_scores": True, "mode": "dense"}
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 3 and "text" not in response.json()["hits"][0]
    # 3.0 is the integer 3 in JSON Schema (and schema fuzzers send it so)
    response = client.post("/search", json={"query": QUERY, "top_k": 3.0})
    assert response.status_code == 200 and len(response.json()["hits"]) == 3, response.text
    # a number field takes an integer too (JSON has one number type); fusion is ignored by dense
    response = client.post("/search", json={"query": QUERY, "fusion": {"dense_weight": 1, "bm25_depth": 50.0}})
    assert response.status_code == 200, response.text


def test_a_query_of_control_and_format_characters_is_blank_and_the_schema_says_so(client: TestClient) -> None:
    from service.schemas import BLANK_CHARS, NOT_BLANK_PATTERN

    assert {"\x00", "\x7f", "\u200b", "\ufeff", " ", "\u3000"} <= set(BLANK_CHARS)
    assert not {"a", "0", "-", "\\", "]", "\u00e9", "\u4e2d"} & set(BLANK_CHARS)
    pattern = client.get("/openapi.json").json()["components"]["schemas"]["SearchRequest"]["properties"]["query"]
    assert pattern["pattern"] == NOT_BLANK_PATTERN
    # the published pattern and the server's check agree on every character of the BMP
    compiled = re.compile(NOT_BLANK_PATTERN)
    disagree = [
        hex(code)
        for code in range(0x10000)
        if not 0xD800 <= code <= 0xDFFF and (compiled.search(chr(code)) is None) != (chr(code) in BLANK_CHARS)
    ]
    assert disagree == []
    for q in ["\x00", "\x00\x01\u200b", "\t\u2028"]:
        response = client.get("/search", params={"q": q})
        assert response.status_code == 422 and "q: query must contain non-whitespace text" in response.json()["error"]
    assert client.get("/search", params={"q": "\x00film\u200b"}).status_code == 200  # text among them is kept


@pytest.mark.parametrize(
    "query_string, fragment",
    [
        ("q=cancer&top_k=abc&top_k=3", "top_k: given 2 times; give it once"),
        ("q=cancer&top_k=3&top_k=3", "top_k: given 2 times; give it once"),
        ("q=cancer&q=film", "q: given 2 times; give it once"),
        ("q=cancer&mode=dense&mode=bm25&mode=dense", "mode: given 3 times; give it once"),
        ("q=cancer&top_k=%0A2", "top_k: must be an integer written in decimal digits"),
        ("q=cancer&top_k=%202", "top_k: must be an integer written in decimal digits"),
        ("q=cancer&top_k=2.0", "top_k: must be an integer written in decimal digits"),
        ("q=cancer&top_k=1_0", "top_k: must be an integer written in decimal digits"),
        ("q=cancer&top_k=%2B2", "top_k: must be an integer written in decimal digits"),
    ],
)
def test_get_search_refuses_repeated_and_padded_parameters(client: TestClient, query_string: str, fragment: str) -> None:
    response = client.get(f"/search?{query_string}")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation_error" and fragment in body["error"], body["error"]
    assert isinstance(body["detail"], list) and body["detail"][0]["loc"][0] == "query"


def test_get_search_takes_each_parameter_once_in_plain_digits(client: TestClient) -> None:
    response = client.get("/search?q=cancer&top_k=2&return_text=false&mode=dense")
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 2 and "text" not in response.json()["hits"][0]


def test_invalid_json_says_what_is_wrong_and_where(client: TestClient) -> None:
    for document in ['{"query": "film", }', '{\n  "query": "film",\n  "top_k": \n}', "{not json", '{"query": "film"} x']:
        try:
            json.loads(document)
        except json.JSONDecodeError as exc:  # the parser's own words and position
            expected = f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        response = client.post("/search", content=document.encode(), headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == expected and body["type"] == "validation_error"
        assert body["detail"][0]["loc"][0] == "body" and body["detail"][0]["msg"] == expected
    response = client.post("/search", content=b'{"query": "x", "top_k": }', headers={"content-type": "application/json"})
    assert response.json()["error"] == "body is not valid JSON: Expecting value at line 1 column 25"
    multi_line = b'{\n  "query": "film",\n  "top_k": \n}'
    response = client.post("/search", content=multi_line, headers={"content-type": "application/json"})
    assert response.json()["error"] == "body is not valid JSON: Expecting value at line 4 column 1"


def test_get_search_validation(client: TestClient) -> None:
    for params, fragment in [
        ({"q": "  "}, "q: query must contain"),
        ({}, "q: Field required"),
        ({"q": "a", "top_k": 0}, "top_k"),
    ]:
        response = client.get("/search", params=params)
        assert response.status_code == 422 and fragment in response.json()["error"]


def test_search_params_the_family_lacks_are_422(client: TestClient) -> None:
    response = client.post("/search", json={"query": QUERY, "search_params": {"nprobe": 8}})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "invalid_search_params" and "nprobe" in body["error"]
    assert body["detail"]["index_family"] == "Flat"
    assert client.post("/search", json={"query": QUERY}).status_code == 200  # the batcher is unharmed


def test_too_large_requests_are_413(index_root: Path) -> None:
    with serving(settings_for(index_root, max_body_bytes=4096, max_queries_per_request=4)) as client:
        response = client.post("/search", json={"queries": ["film"] * 5})
        assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
        assert "limit is 4" in response.json()["error"]
        big = json.dumps({"query": "film " * 1000}).encode()
        response = client.post("/search", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["detail"] == {"limit_bytes": 4096}

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"query": "'
            for _ in range(100):
                yield b"film " * 20
            yield b'"}'

        response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
        assert client.post("/search", json={"queries": ["film"] * 4}).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["type"] == "http_error"
    response = client.delete("/search")
    assert response.status_code == 405 and "POST" in response.headers["allow"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("OPTIONS", "/search", {"GET", "POST"}),
        ("DELETE", "/search", {"GET", "POST"}),
        ("PUT", "/search", {"GET", "POST"}),
        ("OPTIONS", "/info", {"GET"}),
        ("POST", "/healthz", {"GET"}),
        ("GET", "/admin/reload", {"POST"}),
    ],
)
def test_a_wrong_method_gets_405_listing_every_method_of_the_path(
    client: TestClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed
    assert response.json()["type"] == "http_error"


def test_every_response_says_nosniff_once(client: TestClient) -> None:
    answers = [
        client.get("/healthz"),
        client.get("/metrics"),
        client.get("/openapi.json"),
        client.get("/"),
        client.get("/nope"),
        client.post("/search", json={"query": QUERY}),
        client.post("/search", json={"query": " "}),
        client.options("/search"),
    ]
    for response in answers:
        assert response.headers.get_list("x-content-type-options") == ["nosniff"], (response.url, response.status_code)


def test_md2pr_serve_runs_uvicorn_without_a_server_header(index_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from service.__main__ import main as serve_main

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    monkeypatch.setenv("MD2PR_INDEX", str(index_root))
    assert serve_main(["--port", "8123"]) == 0
    assert len(calls) == 1 and calls[0]["server_header"] is False and calls[0]["port"] == 8123


def test_crash_is_500_with_request_id_and_traceback_only_in_log(
    index_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serving(settings_for(index_root), raise_server_exceptions=False) as client:
        encoder = client.app.state.runtime.holder.current.retriever.encoder

        def broken(*args, **kwargs):
            raise RuntimeError("kaboom in the encoder")

        encoder.encode_queries = broken
        try:
            with caplog.at_level(logging.ERROR):
                response = client.post("/search", json={"query": QUERY}, headers={"x-request-id": "req-42"})
        finally:
            del encoder.encode_queries
        assert response.status_code == 500
        body = response.json()
        assert body["type"] == "internal_error" and body["detail"] == {"request_id": "req-42"}
        assert "kaboom" not in response.text and "Traceback" not in response.text
        assert response.headers["x-request-id"] == "req-42"
        logged = [r for r in caplog.records if "req-42" in r.getMessage()]
        assert logged and logged[0].exc_info and "kaboom" in str(logged[0].exc_info[1])
        assert client.post("/search", json={"query": QUERY}).status_code == 200


def test_queue_full_is_429_with_retry_after(index_root: Path) -> None:
    settings = settings_for(index_root, batch_max_queries=1, queue_max_queries=2)
    with serving(settings) as client, ThreadPoolExecutor(4) as pool:
        with Gate(client) as gate:
            running = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            queued = [pool.submit(client.post, "/search", json={"query": QUERY}) for _ in range(2)]
            wait_until(lambda: client.app.state.runtime.batcher.depth == 2, "a full queue")
            refused = client.post("/search", json={"query": QUERY})
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["type"] == "overloaded" and "2 queries are waiting" in refused.json()["error"]
            batch = client.post("/search", json={"queries": ["a", "b"]})
            assert batch.status_code == 429
            gate.release.set()
            assert [f.result(30).status_code for f in [running, *queued]] == [200, 200, 200]
        assert metric(client, "md2pr_rejected_total", reason="queue_full") == 2
        assert metric(client, "md2pr_http_requests_total", route="/search", method="POST", status="429") == 2
        assert client.post("/search", json={"query": QUERY}).status_code == 200


def test_a_search_over_the_wait_budget_is_refused_before_its_body_is_read(index_root: Path) -> None:
    """Early admission: under overload a refusal costs no parsing (an invalid body still gets the
    429, not a 422), carries CORS and Retry-After, and is counted under the /search route."""
    settings = settings_for(index_root, batch_max_queries=1, max_queue_wait_ms=50, cors_origins="https://app.example")
    origin = {"origin": "https://app.example"}
    with serving(settings) as client, ThreadPoolExecutor(4) as pool:
        batcher = client.app.state.runtime.batcher
        with Gate(client) as gate:
            running = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            queued = [pool.submit(client.post, "/search", json={"query": QUERY}) for _ in range(2)]
            wait_until(lambda: batcher.depth == 2, "two queued searches")
            batcher._query_s = 0.1  # as if measured: 2 whole batches of 1 ahead -> >= 0.2 s > 50 ms
            refused = client.post("/search", content=b"{not json", headers={**origin, "content-type": "application/json"})
            assert refused.status_code == 429 and refused.json()["type"] == "overloaded"
            assert "would wait about" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1
            assert refused.headers["access-control-allow-origin"] == "https://app.example"
            assert refused.headers["x-content-type-options"] == "nosniff" and refused.headers["x-request-id"]
            # (another connection: this one was just told to come back after Retry-After, and would be held)
            other = TestClient(client.app, client=("testclient", 50001))
            assert other.get("/search", params={"q": QUERY}).status_code == 429
            assert client.get("/healthz").status_code == 200  # only searches are admitted by their wait
            assert batcher.depth == 2  # the refused requests took nothing from the queue
            gate.release.set()
            assert [f.result(30).status_code for f in [running, *queued]] == [200, 200, 200]
        assert metric(client, "md2pr_rejected_total", reason="expected_wait") == 2
        assert metric(client, "md2pr_http_requests_total", route="/search", method="POST", status="429") == 1
        assert metric(client, "md2pr_http_requests_total", route="/search", method="GET", status="429") == 1
        assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_request_timeout_is_504_and_the_queue_recovers(index_root: Path) -> None:
    with serving(settings_for(index_root, request_timeout_s=0.2)) as client, ThreadPoolExecutor(2) as pool:
        with Gate(client) as gate:
            held = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            response = client.post("/search", json={"query": QUERY})  # waits in the queue, gives up
            assert response.status_code == 504 and response.json()["type"] == "timeout"
            gate.release.set()
            assert held.result(30).status_code == 504  # its answer came after the deadline
        assert client.post("/search", json={"query": QUERY}).status_code == 200
        assert client.app.state.runtime.batcher.depth == 0


# ------------------------------------------------------------------------------- readiness
def test_not_ready_until_loaded(index_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = Retriever.open

    def slow_open(*args, **kwargs):
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr("service.state.Retriever.open", slow_open)
    with serving(settings_for(index_root), wait_ready=False) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["type"] == "not_ready"
        assert "loading" in ready.json()["error"] and ready.headers["retry-after"] == "1"
        search = client.post("/search", json={"query": QUERY})
        assert search.status_code == 503 and search.json()["type"] == "not_ready"
        assert client.get("/info").status_code == 503
        assert metric(client, "md2pr_ready") == 0
        release.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, "readiness")
        assert client.post("/search", json={"query": QUERY}).status_code == 200
        assert metric(client, "md2pr_ready") == 1


def test_an_index_from_another_encoder_never_becomes_ready(
    index_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other"))
    config = json.loads((other / "encoder_config.json").read_text())
    config.update(max_query_length=16, fingerprint="")  # a different encoder: new settings, new fingerprint
    (other / "encoder_config.json").write_text(json.dumps(config))
    with serving(settings_for(index_root, encoder_path=str(other)), wait_ready=False) as client:
        wait_until(lambda: not client.app.state.runtime.holder.loading, "the load to finish")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "was built by encoder" in ready.json()["error"]
        assert client.post("/search", json={"query": QUERY}).status_code == 503
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------ info, metrics
def test_info_describes_model_and_index(client: TestClient, index_root: Path) -> None:
    info = client.get("/info").json()
    manifest = json.loads((index_root / VERSIONS_DIR / info["index"]["version"] / MANIFEST_FILE).read_text())
    assert info["index"]["family"] == "Flat" and info["index"]["count"] == manifest["count"] == 420
    assert info["index"]["dimension"] == info["model"]["dimension"] == 32
    assert info["model"]["fingerprint"] == manifest["encoder"]["fingerprint"]
    assert info["serving"]["torch_threads"] == 1 and info["serving"]["batch_max_queries"] == 32
    assert info["model"]["backend"] == "torch" and info["index"]["backend"] == manifest["backend"] == "faiss"


def test_metrics_in_prometheus_format(client: TestClient) -> None:
    client.post("/search", json={"queries": [QUERY, "film"], "top_k": 2})
    client.post("/search", json={"query": ""})
    text = client.get("/metrics").text
    for name in [
        "md2pr_http_requests_total",
        "md2pr_http_request_duration_seconds_bucket",
        "md2pr_encode_seconds_bucket",
        "md2pr_search_seconds_bucket",
        "md2pr_batch_queries_bucket",
        "md2pr_queue_depth",
        "md2pr_index_passages",
        "md2pr_queue_wait_seconds_bucket",
        "md2pr_index_info",
    ]:
        assert f"\n{name}" in text, name
    assert metric(client, "md2pr_http_requests_total", route="/search", method="POST", status="422") >= 1
    assert metric(client, "md2pr_index_passages") == 420
    assert metric(client, "md2pr_encode_seconds_count") >= 1
    client.get("/no/such/path/12345")
    assert "/no/such/path" not in client.get("/metrics").text  # raw paths never become labels
    assert metric(client, "md2pr_http_requests_total", route="unmatched", method="GET", status="404") >= 1


def test_one_json_log_line_per_request(index_root: Path) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    access = logging.getLogger("md2pr.access")
    access.addHandler(handler)
    try:
        with serving(settings_for(index_root, access_log=True)) as client:
            records.clear()
            client.post("/search", json={"query": QUERY}, headers={"x-request-id": "abc-1"})
            client.post("/search", json={"query": ""})
            client.get("/healthz")
    finally:
        access.removeHandler(handler)
    lines = [json.loads(r.getMessage()) for r in records]
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/search", 200),
        ("/search", 422),
        ("/healthz", 200),
    ]
    assert lines[0]["request_id"] == "abc-1" and len(lines[1]["request_id"]) == 32
    assert all(line["latency_ms"] > 0 and line["method"] in ("GET", "POST") for line in lines)
    # the answered search says where its time went (its Server-Timing); the others have none
    assert set(lines[0]["timing_ms"]) == {"queue", "encode", "search"}
    assert sum(lines[0]["timing_ms"].values()) <= lines[0]["latency_ms"]
    assert "timing_ms" not in lines[1] and "timing_ms" not in lines[2]
    assert QUERY not in json.dumps(lines)  # query text stays out of the log


def test_server_timing_parsing() -> None:
    assert server_timing("queue;dur=1.50, encode;dur=2, search;dur=0.25") == {
        "queue": 1.5,
        "encode": 2.0,
        "search": 0.25,
    }
    assert server_timing("cache;desc=hit, db;dur=x, total;dur=3") == {"total": 3.0}
    assert server_timing("") == {}


def test_cors_is_off_unless_configured(client: TestClient, index_root: Path) -> None:
    headers = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in client.options("/search", headers=headers).headers
    with serving(settings_for(index_root, cors_origins="https://app.example"), wait_ready=False) as cors:
        allowed = cors.options("/search", headers=headers)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = cors.options("/search", headers={**headers, "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_search_page_is_served_with_a_strict_policy(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert 'id="search-form"' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "'sha256-" in policy and "unsafe-inline" not in policy


# ----------------------------------------------------------------------------------- admin
def test_admin_needs_the_key(client: TestClient, index_root: Path) -> None:
    missing = client.post("/admin/reload")
    assert missing.status_code == 401 and missing.json()["type"] == "unauthorized"
    assert "www-authenticate" in missing.headers
    wrong = client.post("/admin/reload", headers={"x-api-key": KEY + "x"})
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong API key"
    right = client.post("/admin/reload", headers={"x-api-key": KEY})
    assert right.status_code == 200 and right.json()["status"] == "unchanged"
    with serving(settings_for(index_root, admin_api_key=None), wait_ready=False) as keyless:
        disabled = keyless.post("/admin/reload", headers={"x-api-key": KEY})
        assert disabled.status_code == 403 and "disabled" in disabled.json()["error"]


# ------------------------------------------------------------------------------ hot swaps
def test_reload_under_concurrent_requests_has_zero_failures(index_root: Path, versions: list[str]) -> None:
    point_current(index_root, versions[0])
    stop = threading.Event()
    with serving(settings_for(index_root)) as client:
        encoder = client.app.state.runtime.holder.current.retriever.encoder

        answered = [0]

        def hammer(i: int) -> list[tuple[int, str]]:
            seen = []
            while not stop.is_set():
                r = client.post("/search", json={"query": f"{QUERY} {i}", "top_k": 3})
                seen.append((r.status_code, r.json().get("index_version", r.text)))
                answered[0] += 1
            return seen

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(hammer, i) for i in range(4)]
            for swap in range(6):
                before = answered[0]
                wait_until(lambda: answered[0] >= before + 8, "requests between swaps")  # swaps land mid-traffic
                target = versions[(swap + 1) % 2]
                point_current(index_root, target)
                reply = client.post("/admin/reload", headers={"x-api-key": KEY})
                assert reply.status_code == 200 and reply.json()["status"] == "swapped", reply.text
                assert reply.json()["index_version"] == target and reply.json()["encoder_reused"] is True
                assert client.get("/info").json()["index"]["version"] == target
                assert client.post("/search", json={"query": QUERY}).json()["index_version"] == target
            stop.set()
            seen = [item for w in workers for item in w.result(60)]
        assert len(seen) >= 48 and {status for status, _ in seen} == {200}
        assert {version for _, version in seen} <= set(versions)
        assert client.app.state.runtime.holder.current.retriever.encoder is encoder  # never reloaded
        assert client.get("/info").json()["serving"]["reloads"] == 7  # the first load and 6 swaps
        assert metric(client, "md2pr_index_reloads_total", outcome="swapped") == 7


def test_in_flight_batch_finishes_on_the_old_version(index_root: Path, versions: list[str]) -> None:
    point_current(index_root, versions[0])
    with serving(settings_for(index_root)) as client, ThreadPoolExecutor(2) as pool:
        old = client.app.state.runtime.holder.current
        with Gate(client) as gate:
            in_flight = pool.submit(client.post, "/search", json={"query": QUERY})
            assert gate.entered.wait(30)
            point_current(index_root, versions[1])
            # The swap's probe runs on the compute thread too, after the batch that holds it.
            reload = pool.submit(client.post, "/admin/reload", headers={"x-api-key": KEY})
            wait_until(lambda: client.app.state.runtime.manager._lock.locked(), "the reload to start")
            gate.release.set()
            assert in_flight.result(30).json()["index_version"] == versions[0]
            assert reload.result(30).json()["index_version"] == versions[1]
        assert old.retired and old.leases == 0
        assert client.post("/search", json={"query": QUERY}).json()["index_version"] == versions[1]


def _copy_version(root: Path, source: str, name: str) -> Path:
    target = root / VERSIONS_DIR / name
    shutil.copytree(root / VERSIONS_DIR / source, target)
    return target


def _corrupt_truncated(directory: Path) -> None:
    path = directory / FAISS_FILE
    path.write_bytes(path.read_bytes()[:1000])


def _corrupt_header(directory: Path) -> None:
    path = directory / FAISS_FILE
    data = path.read_bytes()
    path.write_bytes(b"XXXX" + data[4:])  # the right size, an unknown index type


def _corrupt_foreign_encoder(directory: Path) -> None:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["encoder"]["fingerprint"] = "f" * 64
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


def _corrupt_nan_vectors(directory: Path) -> None:
    index = faiss.read_index(str(directory / FAISS_FILE))
    nan = faiss.IndexFlatIP(index.d)
    nan.add(np.full((index.ntotal, index.d), np.nan, dtype=np.float32))
    faiss.write_index(nan, str(directory / FAISS_FILE))


@pytest.mark.parametrize(
    "corrupt, fragment",
    [
        (_corrupt_truncated, "index.faiss is 1000 bytes"),
        (_corrupt_header, 'index.faiss unreadable: Index type 0x58585858 ("XXXX") not recognized'),
        (_corrupt_foreign_encoder, "was built by encoder ffffffffffff"),
        (_corrupt_nan_vectors, "probe query"),
    ],
)
def test_broken_version_is_refused_and_the_old_one_serves(
    index_root: Path, versions: list[str], corrupt: Callable[[Path], None], fragment: str
) -> None:
    point_current(index_root, versions[0])
    broken = _copy_version(index_root, versions[0], f"broken-{corrupt.__name__}")
    corrupt(broken)
    try:
        with serving(settings_for(index_root)) as client:
            point_current(index_root, broken.name)
            refused = client.post("/admin/reload", headers={"x-api-key": KEY})
            assert refused.status_code == 409, refused.text
            body = refused.json()
            assert body["type"] == "reload_refused" and fragment in body["error"], body["error"]
            assert f"still serving {versions[0]}" in body["error"] and body["detail"] == {"serving": versions[0]}
            assert not re.search(r"\.cpp|faiss::|Error in ", body["error"]), body["error"]  # FAISS's internals left out
            search = client.post("/search", json={"query": QUERY})
            assert search.status_code == 200 and search.json()["index_version"] == versions[0]
            assert client.get("/info").json()["index"]["version"] == versions[0]
            assert client.get("/readyz").status_code == 200
            assert metric(client, "md2pr_index_reloads_total", outcome="refused") == 1
    finally:
        point_current(index_root, versions[1])
        shutil.rmtree(broken)


def test_watcher_follows_current(index_root: Path, versions: list[str]) -> None:
    point_current(index_root, versions[0])
    with serving(settings_for(index_root, watch_interval_s=0.02)) as client:
        assert client.get("/info").json()["index"]["version"] == versions[0]
        point_current(index_root, versions[1])
        wait_until(lambda: client.get("/info").json()["index"]["version"] == versions[1], "the watcher to swap")
        assert client.post("/search", json={"query": QUERY}).json()["index_version"] == versions[1]


# ------------------------------------------------------------------------ the API contract
def _contract(schema: dict) -> dict:
    """The parts of the OpenAPI document clients depend on: routes, parameters, bodies, codes, fields."""
    paths = {}
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            paths[f"{method.upper()} {path}"] = {
                "parameters": {
                    p["name"]: {k: v for k, v in p["schema"].items() if k != "title"} for p in op.get("parameters", [])
                },
                "body": body.get("$ref", "").rsplit("/", 1)[-1] or None,
                "responses": sorted(op["responses"]),
                "security": bool(op.get("security")),
            }
    fields = {}
    for name, model in schema["components"]["schemas"].items():
        for field, spec in model.get("properties", {}).items():
            fields[f"{name}.{field}"] = {
                k: spec[k]
                for k in (
                    "type",
                    "minimum",
                    "maximum",
                    "minLength",
                    "maxLength",
                    "minItems",
                    "maxItems",
                    "pattern",
                    "default",
                )
                if k in spec
            }
        if "oneOf" in model:
            fields[f"{name}:oneOf"] = model["oneOf"]
    return {"paths": paths, "fields": fields}


def test_openapi_snapshot(client: TestClient) -> None:
    contract = _contract(client.get("/openapi.json").json())
    if os.environ.get("MD2PR_UPDATE_SNAPSHOTS"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert contract == expected, (
        "the API changed; if on purpose, rerun with MD2PR_UPDATE_SNAPSHOTS=1 and review the diff"
    )


def test_openapi_documents_every_request_field_with_limits_and_examples(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for model, spec in components.items():
        for field, field_spec in spec.get("properties", {}).items():
            assert field_spec.get("description"), f"{model}.{field} has no description"
    request = components["SearchRequest"]["properties"]
    assert request["top_k"]["maximum"] == 100 and request["query"]["maxLength"] == 2048
    assert request["queries"]["maxItems"] == 32 and request["query"]["examples"]
    assert (
        components["SearchRequest"]["examples"]
        and components["SearchParams"]["properties"]["nprobe"]["maximum"] == 4096
    )
    search = schema["paths"]["/search"]["post"]["responses"]
    assert {"200", "413", "422", "429", "503", "504"} <= set(search)
    assert search["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    reload = schema["paths"]["/admin/reload"]["post"]
    assert "requestBody" not in reload and not reload.get("parameters")  # no request can name a path


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`MD2PR_{name.upper()}`" in readme, f"MD2PR_{name.upper()} is missing from the README settings table"


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("MD2PR_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MD2PR_BATCH_MAX_QUERIES", "1")
    settings = Settings()
    assert settings.cors_origins == ["https://a.example", "https://b.example"] and settings.batch_max_queries == 1
    from service.__main__ import main as serve_main

    monkeypatch.setenv("MD2PR_BATCH_MAX_QUERIES", "0")
    assert serve_main([]) == 2  # one readable line, before anything starts
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: MD2PR_BATCH_MAX_QUERIES: Input should be greater than or equal to 1"


def test_no_route_runs_a_dependency_or_endpoint_in_the_thread_pool() -> None:
    """FastAPI runs a plain ``def`` dependency or endpoint in its thread pool: a thread hop (and a
    wake-up of a pool thread competing for the cores) on every request. Every one here is async."""
    import inspect

    from fastapi.routing import APIRoute

    from service.routes import router

    def calls(dependant):
        yield dependant.call
        for sub in dependant.dependencies:
            yield from calls(sub)

    sync = []
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    for route in routes:
        for call in calls(route.dependant):
            target = call if inspect.isfunction(call) or inspect.ismethod(call) else getattr(call, "__call__", call)
            if call is not None and not inspect.iscoroutinefunction(target):
                sync.append(f"{route.path}: {getattr(call, '__name__', call)}")
    assert sync == []
    assert {"/search", "/info", "/admin/reload"} <= {r.path for r in routes}
