"""Shared pieces of the service benchmarks: real query text, a server subprocess, machine facts.

Used by ``service_load.py``, ``service_swap.py`` and ``service_fuzz.py`` (run them as scripts
from the project root; this module is imported from the same folder).
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results"


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


def command_line() -> str:
    return " ".join(["python", *[shlex.quote(a) for a in [os.path.relpath(sys.argv[0], PROJECT), *sys.argv[1:]]]])


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
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
