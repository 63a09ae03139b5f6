"""Closed-loop HTTP load from ``wrk`` (a C load generator), for the service benchmarks.

The Python generator (``service_common.closed_loop``: httpx on asyncio) spends about as much CPU per
request as the server it measures; on a 2-core machine, where client and server share the cores,
that halves what any server can show. ``wrk`` (Debian package ``wrk``: ``apt-get install wrk``)
costs a small fraction of that, so the figures are the server's. It runs as a subprocess with
``benchmarks/wrk_rotate.lua``: ``concurrency`` keep-alive connections, each sending its next
request as soon as the previous answer arrives (closed loop), cycling through the prepared
requests (real query text), and a JSON summary parsed from its output.

wrk runs one thread per connection, so each thread's request and response alternate and the Lua
script times every 200 answer itself (a monotonic clock through LuaJIT's FFI): the percentiles
are over the 200 answers, as ``closed_loop``'s are; wrk's own, over every response (a fast 429
included), are kept as ``all_p50_ms`` etc. The warm-up is a separate, unmeasured wrk run just before
the measured one; durations are whole seconds.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # service_common beside this file, also when loaded by path (tests)

from service_common import percentile, round_ms  # noqa: E402
SCRIPT = HERE / "wrk_rotate.lua"
_MARK = "WRK_JSON "


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no summary (the message is one line for the user)."""


@dataclass(frozen=True)
class WrkRequest:
    """One prepared request: ``path`` with its query string already encoded; ``body`` JSON text or empty."""

    method: str
    path: str
    body: str = ""

    def line(self) -> str:
        """Its line in the request file (tab-separated: method, path, body)."""
        if "\t" in self.path or "\n" in self.path or "\n" in self.body or "\t" in self.body:
            raise ValueError(f"request {self.path!r}: tabs and newlines must be escaped")
        return f"{self.method}\t{self.path}\t{self.body}"


def get_request(path: str, params: dict[str, object]) -> WrkRequest:
    """A GET of ``path`` with ``params`` URL-encoded."""
    return WrkRequest("GET", f"{path}?{urlencode(params)}")


def post_json(path: str, body: dict[str, object]) -> WrkRequest:
    """A POST of ``body`` as compact JSON (``json.dumps`` escapes tabs and newlines)."""
    return WrkRequest("POST", path, json.dumps(body, separators=(",", ":")))


def wrk_binary() -> str:
    """The path of ``wrk``, or :class:`WrkError` saying how to get it."""
    found = shutil.which("wrk")
    if not found:
        raise WrkError("wrk is not installed (apt-get install wrk), or run with --driver python")
    return found


def parse_summary(output: str) -> dict:
    """The ``WRK_JSON`` summary line of a wrk run's stdout, decoded."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK) :])
    raise WrkError("wrk printed no summary: " + (output.strip().splitlines() or ["(no output)"])[-1])


def summarise(summary: dict, concurrency: int) -> dict:
    """A wrk summary as the service benchmarks record a run (the keys of ``closed_loop``'s result)."""
    duration_s = summary["duration_us"] / 1e6
    statuses = {str(k): int(v) for k, v in summary["statuses"].items()}
    failures = summary["errors"]
    for kind in ("connect", "read", "write", "timeout"):
        if failures[kind]:
            statuses[f"client_{kind}"] = failures[kind]
    ok = statuses.get("200", 0)
    latency = summary["latency_us"]
    ok_ms = [us / 1000 for us in summary.get("ok_latency_us", [])]

    def ms(us: float) -> float | None:
        return round(us / 1000, 3) if summary["requests"] else None

    return {
        "driver": "wrk",
        "latency_over": "200 responses",
        "concurrency": concurrency,
        "duration_s": round(duration_s, 3),
        "requests": sum(statuses.values()),
        "ok": ok,
        "qps": round(ok / duration_s, 2) if duration_s else 0.0,
        "p50_ms": round_ms(percentile(ok_ms, 50)),
        "p95_ms": round_ms(percentile(ok_ms, 95)),
        "p99_ms": round_ms(percentile(ok_ms, 99)),
        "mean_ms": round_ms(statistics.fmean(ok_ms) if ok_ms else None),
        "timed_ok": len(ok_ms),  # == ok unless a 200 arrived on a connection without a request on record
        "all_p50_ms": ms(latency["p50"]),
        "all_p99_ms": ms(latency["p99"]),
        "all_max_ms": ms(latency["max"]),
        "statuses": statuses,
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "429_without_retry_after": int(summary["retry_after_missing"]),
    }


def _run(url: str, request_file: Path, concurrency: int, seconds: int, timeout_s: float, honour_retry_after: bool = False) -> dict:
    argv = [
        wrk_binary(),
        f"--threads={concurrency}",  # one connection per thread: request and response alternate (see the module doc)
        f"--connections={concurrency}",
        f"--duration={seconds}s",
        f"--timeout={max(1, math.ceil(timeout_s))}s",
        f"--script={SCRIPT}",
        url,
        "--",
        str(request_file),
    ]
    try:
        env = {**os.environ, "MD2PR_WRK_HONOUR_RETRY_AFTER": "1" if honour_retry_after else "0"}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30, env=env)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {seconds + timeout_s + 30:.0f} s") from None
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return parse_summary(done.stdout)


def wrk_closed_loop(
    url: str,
    requests: list[WrkRequest],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    timeout_s: float = 30.0,
    honour_retry_after: bool = False,
) -> dict:
    """``concurrency`` closed-loop clients for ``duration_s`` (after an unmeasured ``warmup_s`` run),
    cycling through ``requests``; the result has the keys of ``service_common.closed_loop``'s.

    A request not answered in ``timeout_s`` counts as ``client_timeout``. ``honour_retry_after``:
    a client answered 429 waits its ``Retry-After`` before the next request (else it asks again at once).
    """
    if not requests:
        raise ValueError("no requests to send")
    with tempfile.TemporaryDirectory(prefix="md2pr-wrk-") as tmp:
        request_file = Path(tmp) / "requests.tsv"
        request_file.write_text("\n".join(r.line() for r in requests) + "\n", encoding="utf-8")
        if warmup_s > 0:
            _run(url, request_file, concurrency, max(1, math.ceil(warmup_s)), timeout_s, honour_retry_after)
        summary = _run(url, request_file, concurrency, max(1, math.ceil(duration_s)), timeout_s, honour_retry_after)
    result = summarise(summary, concurrency)
    result["honour_retry_after"] = honour_retry_after
    return result
