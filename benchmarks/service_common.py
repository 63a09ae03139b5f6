"""Shared pieces of the benchmarks: their environment and common flags, real query text, a server
subprocess, machine facts, the recorded command line and the report file.

Used by ``service_load.py``, ``service_swap.py`` and ``service_fuzz.py``, and for the report
by the other benchmarks (run them as scripts from the project root; this module is imported
from the same folder).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx

from retrieval.jsonio import write_json_atomic

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results"
#: The index ``make run`` builds and serves: what the service benchmarks measure by default.
DEFAULT_INDEX = PROJECT / "artifacts" / "indexes" / "scifact"

#: What the service benchmarks run under, as the service does: idle OpenMP threads sleep instead
#: of spinning against the server's (read when torch loads), nothing is downloaded, and the
#: tokenizers library starts no thread pool of its own. Variables already set are kept.
SERVICE_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def use_service_environment() -> None:
    """Set :data:`SERVICE_ENVIRONMENT` where unset: first thing in ``main``, before torch loads
    (the service benchmarks import torch only inside functions) and before a server starts
    (it inherits this environment)."""
    for name, value in SERVICE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def add_index_arguments(parser: argparse.ArgumentParser, index_help: str | None = None, queries: bool = True) -> None:
    """``--index`` (default :data:`DEFAULT_INDEX`) and, with ``queries``, where the query text comes from:
    ``--data`` (the shared data folder: ``$MD2PR_DATA_DIR`` or ``../shared/data``) and ``--queries``
    (comma-separated sources of :func:`load_queries`)."""
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help=index_help)
    if queries:
        parser.add_argument(
            "--data", type=Path, default=Path(os.environ.get("MD2PR_DATA_DIR", PROJECT.parent / "shared" / "data"))
        )
        parser.add_argument("--queries", default="scifact,msmarco", help="comma-separated: scifact, msmarco")


def add_server_env_argument(parser: argparse.ArgumentParser) -> None:
    """``--server-env NAME=VALUE`` (repeatable): extra ``MD2PR_*`` settings of the benchmark's
    server(s), parsed into a dict (e.g. ``{"MD2PR_BACKEND": "onnx-int8"}``)."""

    def setting(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
        return name, value

    parser.add_argument(
        "--server-env",
        action="append",
        type=setting,
        default=[],
        metavar="NAME=VALUE",
        help="extra MD2PR_* setting of the server, e.g. MD2PR_BACKEND=onnx-int8 (repeatable)",
    )


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The ``--server-env`` settings as a dict."""
    return dict(args.server_env)


def add_report_arguments(parser: argparse.ArgumentParser, smoke_help: str | None = None) -> None:
    """``--smoke`` (a short run that proves the script works) and ``--output`` (see :func:`report_path`)."""
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--output", type=Path, default=None)


def report_path(args: argparse.Namespace, name: str) -> Path:
    """Where the report goes: ``--output``, else ``results/<name>.json``, or for a ``--smoke`` run
    ``<tmp>/<name>-smoke.json``: a smoke run's numbers never go next to the real ones."""
    if args.output is not None:
        return args.output
    return Path(tempfile.gettempdir()) / f"{name}-smoke.json" if args.smoke else RESULTS / f"{name}.json"


def load_queries(data_dir: Path, sources: list[str], seed: int = 0) -> list[str]:
    """Real query text: SciFact claims and/or MS MARCO dev-small questions, shuffled (fixed seed)."""
    from retrieval.datasets import read_beir_queries, read_tsv_queries

    texts: list[str] = []
    for source in sources:
        if source == "scifact":
            texts += list(read_beir_queries(data_dir / "scifact" / "queries.jsonl").values())
        elif source == "msmarco":
            texts += list(
                read_tsv_queries(
                    data_dir / "topics_qrels" / "topics" / "topics.msmarco-passage.dev-subset.txt"
                ).values()
            )
        else:
            raise SystemExit(f"error: unknown query source {source!r} (scifact, msmarco)")
    texts = [t.strip() for t in texts if t.strip()]
    random.Random(seed).shuffle(texts)
    return texts


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def closed_loop(
    url: str,
    queries: list[str],
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    request: Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]],
    timeout_s: float = 60.0,
) -> dict:
    """Closed-loop load over loopback: ``concurrency`` clients, each sending its next query
    (``request(client, query)``, real query text in turn) as soon as its previous answer arrives.

    Only requests that start after the warm-up and finish within the window count. Latencies
    in ms; ``statuses`` counts HTTP codes (and client-side failures by exception name); a 429
    without ``Retry-After`` is counted apart. Bounded in time: it stops by itself.
    """
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    retry_after_missing = 0
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup_s
        end = measure_from + duration_s

        async def worker() -> None:
            nonlocal retry_after_missing
            while loop.time() < end:
                query = queries[next(counter) % len(queries)]
                started = loop.time()
                retry_after = None
                try:
                    response = await request(client, query)
                    status = str(response.status_code)
                    retry_after = response.headers.get("retry-after")
                except httpx.TimeoutException:
                    status = "client_timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                finished = loop.time()
                if started >= measure_from and finished <= end:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(finished - started)
                    elif status == "429" and not retry_after:
                        retry_after_missing += 1
                if status == "429":
                    await asyncio.sleep(0.01)  # an eager client, but not a spinning one

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    ok = statuses.get("200", 0)
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "requests": sum(statuses.values()),
        "ok": ok,
        "qps": round(ok / duration_s, 2),
        "p50_ms": round_ms(percentile(ms, 50)),
        "p95_ms": round_ms(percentile(ms, 95)),
        "p99_ms": round_ms(percentile(ms, 99)),
        "mean_ms": round_ms(statistics.fmean(ms) if ms else None),
        "statuses": dict(statuses),
        "errors": sum(v for k, v in statuses.items() if k != "200"),
        "429_without_retry_after": retry_after_missing,
    }


def round_ms(value: float | None) -> float | None:
    """Milliseconds to 3 decimals (None stays None)."""
    return None if value is None else round(value, 3)


def machine_facts(threads: int | None) -> dict:
    """What the numbers were measured on (and how busy the machine was when the run started)."""
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "threads": threads or os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE (service default)"),
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this benchmark, for its report: ``python <script from the project root> <args>``
    (``argv`` as given to ``main``; by default the process's own arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", os.path.relpath(sys.argv[0], PROJECT), *args])


@contextmanager
def server(env: dict[str, str], log_path: Path, ready_timeout_s: float = 300) -> Iterator[str]:
    """``md2pr-serve`` in a subprocess on a free loopback port (:func:`service.launcher.running_service`); yields its URL."""
    from service.launcher import ServiceLaunchError, running_service

    try:
        with running_service(env, log_path, ready_timeout_s, cwd=PROJECT) as url:
            yield url
    except ServiceLaunchError as exc:
        raise SystemExit(f"error: {exc}") from None


def write_report(report: dict, output: Path) -> None:
    """Write ``report`` as indented JSON, atomically (parent folders created), and say where on stdout."""
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, report)  # a benchmark killed while writing leaves the previous report whole
    print(f"wrote {output}")
