"""``benchmarks/wrk_load.py``: the request file, the summary parser, and one real wrk run against a
tiny local HTTP server (statuses counted per code, every prepared request sent, 429 without
Retry-After noticed). CI installs wrk (``.ci/run``) and fails without it; elsewhere the run is skipped without it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wrk_load():
    spec = importlib.util.spec_from_file_location("wrk_load", ROOT / "benchmarks" / "wrk_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["wrk_load"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_request_lines(wrk_load):
    get = wrk_load.get_request("/search", {"q": "vitamin D & bone\tdensity", "top_k": 3})
    assert get.line() == "GET\t/search?q=vitamin+D+%26+bone%09density&top_k=3\t"
    post = wrk_load.post_json("/search", {"query": "line\nbreak\ttab", "top_k": 3})
    method, path, body = post.line().split("\t")
    assert (method, path) == ("POST", "/search")
    assert json.loads(body) == {"query": "line\nbreak\ttab", "top_k": 3}
    with pytest.raises(ValueError):
        wrk_load.WrkRequest("POST", "/x", "a\tb").line()


def test_summary_parsed_into_the_run_record(wrk_load):
    line = (
        'noise\nWRK_JSON {"duration_us": 2000000, "requests": 30, "bytes": 900, '
        '"errors": {"connect": 0, "read": 1, "write": 0, "status": 10, "timeout": 2}, '
        '"latency_us": {"min": 900, "max": 9000, "mean": 2500.5, "p50": 2000, "p90": 4000, "p95": 5000, "p99": 8000}, '
        '"statuses": {"200": 20, "429": 10}, "retry_after_missing": 3, "ok_latency_us": [4000, 1000, 2000, 3000, 5000]}\n'
    )
    run = wrk_load.summarise(wrk_load.parse_summary(line), 4)
    assert run["qps"] == 10.0 and run["ok"] == 20 and run["concurrency"] == 4
    assert run["statuses"] == {"200": 20, "429": 10, "client_read": 1, "client_timeout": 2}
    assert run["errors"] == 13 and run["requests"] == 33
    # percentiles of the 200 answers' own times; wrk's over every response kept apart
    assert (run["p50_ms"], run["p99_ms"], run["mean_ms"]) == (3.0, 4.96, 3.0)
    assert (run["all_p50_ms"], run["all_p99_ms"]) == (2.0, 8.0)
    assert run["latency_over"] == "200 responses"
    assert run["429_without_retry_after"] == 3
    with pytest.raises(wrk_load.WrkError, match="no summary"):
        wrk_load.parse_summary("wrk: connection refused\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: Counter = Counter()

    def _answer(self, status: int, headers: dict[str, str]) -> None:
        body = b"{}"
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen[self.path] += 1
        if "busy" in self.path:
            self._answer(429, {})  # no Retry-After: counted apart
        elif "later" in self.path:
            self._answer(429, {"Retry-After": "1"})
        else:
            self._answer(200, {})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        type(self).seen[f"POST {body['q']} {self.headers.get('Content-Type')}"] += 1
        self._answer(200, {})

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _handler_server() -> Iterator[str]:
    """:class:`_Handler` on a free loopback port (its URL) for a real wrk run; wrk missing is a
    skip here and a failure under CI (.ci/run installs it)."""
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (CI must run this test: .ci/run installs it)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    _Handler.seen.clear()  # each run's requests alone, whatever ran before
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_real_wrk_run_counts_statuses_and_cycles_requests(wrk_load):
    with _handler_server() as url:
        requests = [
            wrk_load.get_request("/search", {"q": "one"}),
            wrk_load.get_request("/search", {"q": "busy"}),
            wrk_load.post_json("/search", {"q": "three"}),
        ]
        run = wrk_load.wrk_closed_loop(url, requests, concurrency=2, warmup_s=0, duration_s=1)
    seen = _Handler.seen
    assert set(seen) == {"/search?q=one", "/search?q=busy", "POST three application/json"}
    assert run["driver"] == "wrk" and run["concurrency"] == 2
    assert run["statuses"]["200"] > 0 and run["statuses"]["429"] > 0
    assert run["429_without_retry_after"] == run["statuses"]["429"]
    # every answer was counted by a status (wrk may stop with a request or two in flight)
    assert abs(run["requests"] - sum(seen.values())) <= 2
    assert run["p50_ms"] is not None and run["p50_ms"] > 0
    assert len(run["statuses"]) == 2  # nothing but 200 and 429 answers
    assert run["timed_ok"] == run["statuses"]["200"]  # each 200 paired with its own request


def test_wrk_clients_that_honour_retry_after_wait_before_asking_again(wrk_load):
    """A refused client that honours Retry-After (1 s here) sends a handful of requests in 2 s on
    one connection; one that does not sends them back to back (dozens even from this slow server)."""
    with _handler_server() as url:
        requests = [wrk_load.get_request("/search", {"q": "later"})]
        polite = wrk_load.wrk_closed_loop(url, requests, concurrency=1, warmup_s=0, duration_s=2, honour_retry_after=True)
        storm = wrk_load.wrk_closed_loop(url, requests, concurrency=1, warmup_s=0, duration_s=2)
    assert polite["honour_retry_after"] is True and storm["honour_retry_after"] is False
    assert 1 <= polite["statuses"]["429"] <= 4
    assert storm["statuses"]["429"] > 10  # far more than the polite client's
    assert polite["429_without_retry_after"] == storm["429_without_retry_after"] == 0
