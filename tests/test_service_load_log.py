"""``benchmarks/service_load.py``'s reading of the service's access log: latencies per status and,
for answered searches, where the time went (queue / model / the rest) and the share of queue
waits over the admission budget."""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark(name: str):  # noqa: ANN202  (a benchmarks/ script, loaded by path as it is run)
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its sibling modules (wrk_load, service_common, render_common)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def service_load():
    return _load_benchmark("service_load")

def _line(ts: str, status: int, latency: float, timing: dict | None = None, route: str = "/search") -> str:
    entry = {"ts": ts, "request_id": "x", "method": "POST", "route": route, "status": status, "latency_ms": latency}
    if timing is not None:
        entry["timing_ms"] = timing
    return json.dumps(entry)


def test_server_side_latencies_split_accepted_time(service_load, tmp_path: Path) -> None:
    late = "2026-12-03T15:00:10.000+00:00"
    lines = [
        _line("2026-12-03T14:59:00.000+00:00", 200, 999.0, {"queue": 900.0, "encode": 50.0, "search": 1.0}),  # before
        "INFO uvicorn: not json",
        _line(late, 200, 100.0, {"queue": 60.0, "encode": 20.0, "search": 5.0}),
        _line(late, 200, 400.0, {"queue": 300.0, "encode": 30.0, "search": 10.0}),
        _line(late, 429, 2.0),
        _line(late, 200, 5.0, route="/healthz"),
    ]
    log = tmp_path / "server.log"
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    since = datetime(2026, 12, 3, 15, 0, tzinfo=timezone.utc)
    report = service_load.server_side_latencies(log, since, budget_ms=250.0)
    assert report["200"]["count"] == 2 and report["429"]["count"] == 1
    parts = report["200"]["parts"]
    assert parts["queue"]["p50_ms"] == pytest.approx(180.0) and parts["queue"]["p99_ms"] == pytest.approx(297.6)
    assert parts["model"]["p99_ms"] == pytest.approx(39.85)
    assert parts["other"]["p50_ms"] == pytest.approx(37.5)  # (15 + 60) / 2: latency less queue and model
    assert report["200"]["queue_over_budget_share"] == 0.5
    assert "parts" not in report["429"]
    assert "queue_over_budget_share" not in service_load.server_side_latencies(log, since)["200"]


@pytest.fixture(scope="module")
def admission_lines():
    return _load_benchmark("render_service").admission_lines


def test_the_admission_table_shows_the_split_and_the_share_over_budget(admission_lines) -> None:
    level = {
        "concurrency": 64, "honour_retry_after": False, "qps": 300.0, "p50_ms": 90.0, "p99_ms": 330.0,
        "share_429": 0.1, "errors": 5, "statuses": {"429": 5, "200": 45}, "mean_batch_ms": 40.0, "mean_batch_queries": 14.0,
        "server_side": {"200": {"count": 45, "p50_ms": 88.0, "p99_ms": 327.0, "queue_over_budget_share": 0.0069,
                                "parts": {"queue": {"p50_ms": 3.0, "p99_ms": 206.0}, "model": {"p50_ms": 75.0, "p99_ms": 223.5},
                                          "other": {"p50_ms": 9.0, "p99_ms": 24.4}}},
                        "429": {"count": 5, "p50_ms": 0.1, "p99_ms": 3.0}},
    }
    admission = {"max_queue_wait_ms": 250.0, "queue_max_queries": 256}
    lines = admission_lines({**admission, "levels": [level]})
    row = next(line for line in lines if line.startswith("| 64 |"))
    assert row.rstrip().endswith("| 40.0 (14.0) | 206.0 / 223.5 / 24.4 | 0.69% |")
    assert any(line.startswith("Split of the accepted") for line in lines)
    # a report measured before the split keeps its table as it was
    old = {**level, "server_side": {"200": {"count": 45, "p50_ms": 88.0, "p99_ms": 327.0}}}
    old_lines = admission_lines({**admission, "levels": [old]})
    assert not any("queue / model / rest" in line or line.startswith("Split") for line in old_lines)
    assert next(line for line in old_lines if line.startswith("| 64 |")).rstrip().endswith("| 40.0 (14.0) |")
    # the target line: 327 > 250 + 40 (mean batch) but <= 250 + 223.5 (the model time's p99)
    target = next(line for line in lines if line.startswith("Target,"))
    assert "met in **0 of 1** rows (64: 327.0 > 290.0 ms)" in target and "met in **1 of 1** (64: 327.0 <= 473.5 ms)" in target
    assert not any(line.startswith("Target,") for line in old_lines)
