"""``md2pr-serve`` in a child process: for jobs that evaluate or load-test a real running service.

The experiment pipeline (its served-index check) and the service benchmarks start the service
exactly as an operator does (``python -m service``, settings from ``MD2PR_*``), on a free
loopback port, and stop it when done.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from retrieval.errors import RetrievalError


class ServiceLaunchError(RetrievalError):
    """The child service exited or did not become ready in time (the message names its log)."""


def free_port() -> int:
    """A loopback port free at the time of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(
    env: dict[str, str | None], log_path: Path, ready_timeout_s: float = 300, cwd: Path | None = None
) -> Iterator[str]:
    """Start the service with ``env`` added to this environment (a ``None`` value removes a
    variable); yield its base URL once ``/readyz`` answers 200.

    Its stdout and stderr go to ``log_path``. On leaving, the child gets SIGTERM (uvicorn's
    graceful shutdown) and, 30 s later, SIGKILL.
    """
    port = free_port()
    merged = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    full_env = {name: value for name, value in merged.items() if value is not None}
    argv = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with running_process(argv, full_env, log_path, url, "/readyz", ready_timeout_s, cwd, "the service") as base:
        yield base


@contextmanager
def running_process(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    url: str,
    ready_path: str,
    ready_timeout_s: float = 300,
    cwd: Path | None = None,
    what: str = "the server",
) -> Iterator[str]:
    """Run an HTTP server process (``argv`` with exactly ``env``); yield ``url`` once a GET of
    ``url + ready_path`` answers 200. Output goes to ``log_path``; SIGTERM on leaving, SIGKILL 30 s later.

    Raises :class:`ServiceLaunchError` (naming the log) if the process exits or is not ready in time.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise ServiceLaunchError(f"{what} exited with status {process.returncode} before it was ready; see {log_path}")
            try:
                if httpx.get(url + ready_path, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServiceLaunchError(f"{what} at {url} was not ready within {ready_timeout_s:.0f} s; see {log_path}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
