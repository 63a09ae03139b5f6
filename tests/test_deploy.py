"""Deployment, run here: the containers' entry point, outside Docker.

The images run ``docker/entrypoint.sh`` and ``docker/probe.py``, which are plain scripts in
the repository, so these tests start them as subprocesses exactly as a container does: an
index job builds a NovelEval index through the entry point, the service starts through it on
a free loopback port, passes the health check the image's HEALTHCHECK runs, answers /search,
reloads, and stops gracefully on SIGTERM (the signal ``docker stop`` sends).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from retrieval.datasets import iter_corpus
from retrieval.index_versions import current_version
from service.launcher import free_port

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
ADMIN_KEY = "test-admin-key"
STARTUP_LIMIT_S = 180  # a bound on waiting for a hung start, not a performance assertion


def _load_probe():
    spec = importlib.util.spec_from_file_location("md2pr_probe", REPO / "docker" / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_probe()


def entrypoint_env(**settings: str) -> dict[str, str]:
    """The environment a container gives the entry point: no inherited MD2PR_* settings, the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MD2PR_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    env.update(settings)
    return env


def run_entrypoint(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [str(ENTRYPOINT), *args], cwd=cwd, env=env or entrypoint_env(), capture_output=True, text=True, timeout=timeout
    )


# --- the index job --------------------------------------------------------------------------


@dataclass
class IndexJob:
    root: Path
    version: str
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def index_job(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> IndexJob:
    """``entrypoint.sh build-index`` as the compose ``index`` job runs it, with the tiny model."""
    work = tmp_path_factory.mktemp("deploy")
    root = work / "indexes" / "noveleval"
    result = run_entrypoint(
        ["build-index", f"--corpus={noveleval}", f"--index-root={root}", f"--encoder={tiny_model_dir}",
         "--threads=1", "--no-progress", "--if-missing"],
        cwd=work,
    )
    assert result.returncode == 0, result.stderr
    return IndexJob(root, current_version(root), result)


def test_index_job_publishes_through_the_entrypoint(index_job: IndexJob) -> None:
    assert index_job.version and f"published {index_job.version} (420 passages" in index_job.result.stdout
    manifest = json.loads((index_job.root / "versions" / index_job.version / "manifest.json").read_text())
    assert manifest["count"] == 420
    assert [p.name for p in (index_job.root / "versions").iterdir()] == [index_job.version]


# --- the service ------------------------------------------------------------------------------


@dataclass
class Service:
    process: subprocess.Popen
    port: int
    url: str
    log: Path
    index_root: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def service(index_job: IndexJob, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``entrypoint.sh serve`` on a free loopback port, as the container's CMD runs it."""
    work = tmp_path_factory.mktemp("service")
    port = free_port()
    log = work / "service.log"
    env = entrypoint_env(
        MD2PR_INDEX=str(index_job.root),
        MD2PR_HOST="127.0.0.1",
        MD2PR_PORT=str(port),
        MD2PR_TORCH_THREADS="1",
        MD2PR_ADMIN_API_KEY=ADMIN_KEY,
    )
    with log.open("w") as out:
        process = subprocess.Popen([str(ENTRYPOINT), "serve"], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    running = Service(process, port, url, log, index_job.root)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            ok, message = probe.check_ready(url, timeout=2)
            if ok:
                break
            if process.poll() is not None:
                pytest.fail(f"the service exited with {process.returncode}:\n{running.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the service was not ready after {STARTUP_LIMIT_S} s ({message}):\n{running.log_text()}")
            time.sleep(0.5)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_service_started_by_the_entrypoint_answers_search(service: Service, noveleval: Path) -> None:
    response = httpx.post(
        f"{service.url}/search", json={"query": "Who produced Spider-Man: Across the Spider-Verse?", "top_k": 5}, timeout=30
    )
    assert response.status_code == 200, response.text
    body = response.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    corpus = {p.docid: p for p in iter_corpus(noveleval)}
    assert all(hit["docid"] in corpus and hit["text"] == corpus[hit["docid"]].text for hit in hits)
    assert body["index_version"] == current_version(service.index_root)
    # a bad request still gets the service's error body through the deployment path
    bad = httpx.post(f"{service.url}/search", json={"query": " "}, timeout=30)
    assert bad.status_code == 422 and bad.json()["type"] == "validation_error"


def test_healthcheck_command_reports_readiness(service: Service, tmp_path: Path) -> None:
    ready = run_entrypoint(["healthcheck"], tmp_path, entrypoint_env(MD2PR_PORT=str(service.port)), timeout=60)
    assert ready.returncode == 0 and ready.stdout.startswith("ready"), ready.stderr
    down = run_entrypoint(["healthcheck"], tmp_path, entrypoint_env(MD2PR_PORT=str(free_port())), timeout=60)
    assert down.returncode == 1 and "not ready" in down.stderr and "unreachable" in down.stderr
    waited = run_entrypoint(["wait-ready", "--url", service.url, "--timeout", "60"], tmp_path, timeout=90)
    assert waited.returncode == 0 and waited.stdout.startswith("ready")
    gave_up = run_entrypoint(["wait-ready", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "1"], tmp_path, timeout=60)
    assert gave_up.returncode == 1 and "not ready" in gave_up.stderr


def test_reindex_job_then_reload_swaps_versions_without_a_restart(service: Service, noveleval: Path, tmp_path: Path) -> None:
    """The zero-downtime re-index of the README: a change file through the reindex job, then reload."""
    old = current_version(service.index_root)
    deleted = [p.docid for p in itertools.islice(iter_corpus(noveleval), 2)]
    upsert = {"op": "upsert", "docid": "deploy-upsert-1", "title": "", "text": "spider verse soundtrack producers"}
    changes = tmp_path / "changes.jsonl"
    changes.write_text("\n".join(json.dumps(c) for c in [upsert, *({"op": "delete", "docid": d} for d in deleted)]) + "\n")

    job = run_entrypoint(["reindex", f"--index-root={service.index_root}", f"--changes={changes}", "--threads=1"], tmp_path)
    assert job.returncode == 0, job.stderr
    new = current_version(service.index_root)
    assert new != old and f"published {new}" in job.stdout

    def search(query: str, top_k: int = 3) -> dict:
        return httpx.post(f"{service.url}/search", json={"query": query, "top_k": top_k}, timeout=30).json()

    assert search(upsert["text"])["index_version"] == old  # published, not yet served

    target = f"127.0.0.1:{service.port}"
    refused = run_entrypoint(["reload", "--target", target], tmp_path, entrypoint_env(MD2PR_ADMIN_API_KEY="wrong"))
    assert refused.returncode == 1 and "HTTP 403" in refused.stdout and "stopped at" in refused.stderr
    assert search(upsert["text"])["index_version"] == old

    reloaded = run_entrypoint(["reload"], tmp_path, entrypoint_env(MD2PR_ADMIN_API_KEY=ADMIN_KEY, MD2PR_RELOAD_TARGETS=target))
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    assert "1 replica(s) reloaded" in reloaded.stdout and new in reloaded.stdout  # the replica's answer, shown
    # Query and passage go through the same encoder with the same short text: the upsert is the exact match.
    body = search(upsert["text"])
    assert body["index_version"] == new
    assert body["hits"][0]["docid"] == upsert["docid"] and body["hits"][0]["text"] == upsert["text"]
    info = httpx.get(f"{service.url}/info", timeout=30).json()
    assert info["index"]["count"] == 420 - len(deleted) + 1


def test_sigterm_stops_the_service_gracefully(service: Service) -> None:
    """Last test of the module: it stops the shared service.

    The entry point ``exec``s the server, so the process docker starts (and signals on
    ``docker stop``) is the Python server itself, which shuts down gracefully. Had the shell
    stayed in between, the shell would die of the signal and leave the server running.
    """
    cmdline = Path(f"/proc/{service.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"md2pr-serve" in b" ".join(cmdline) and not cmdline[0].endswith(b"bash"), cmdline
    service.process.send_signal(signal.SIGTERM)
    # uvicorn exits 0, or (since 0.29) re-raises the signal it handled once shutdown is complete
    assert service.process.wait(timeout=60) in (0, -signal.SIGTERM), service.log_text()
    log = service.log_text()
    assert "Application shutdown complete" in log and "Finished server process" in log
    ok, _ = probe.check_ready(service.url, timeout=2)
    assert not ok


# --- the rest of the entry point ---------------------------------------------------------------


def test_serve_without_an_index_fails_with_one_line(tmp_path: Path) -> None:
    result = run_entrypoint(["serve"], tmp_path, entrypoint_env(MD2PR_INDEX=str(tmp_path / "missing"), MD2PR_PORT=str(free_port())))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "no such index" in result.stderr


@pytest.mark.parametrize("command, tool", [("train", "md2pr-train"), ("reindex", "md2pr-reindex"),
                                          ("index", "md2pr-index"), ("build-index", "md2pr-build-index"),
                                          ("serve", "md2pr-serve")])
def test_a_command_this_build_lacks_is_one_clear_line(command: str, tool: str, tmp_path: Path) -> None:
    # Only the system's PATH: none of the project's console scripts are on it.
    env = entrypoint_env(PATH="/usr/bin:/bin")
    result = run_entrypoint([command, "--help"], tmp_path, env, timeout=60)
    assert result.returncode == 127
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tool} is not installed" in lines[0] and result.stdout == ""


def test_any_installed_md2pr_command_runs_by_its_short_name(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "md2pr-hello"
    fake.write_text('#!/bin/sh\necho "hello $*"\n')
    fake.chmod(0o755)
    env = entrypoint_env(PATH=f"{bin_dir}:/usr/bin:/bin")
    result = run_entrypoint(["hello", "a", "b c"], tmp_path, env, timeout=60)
    assert result.returncode == 0 and result.stdout == "hello a b c\n"
    # a documented job this build lacks names what the build has
    missing = run_entrypoint(["train"], tmp_path, env, timeout=60)
    assert missing.returncode == 127 and "(installed: md2pr-hello)" in missing.stderr


def test_other_commands_run_as_given_with_the_offline_defaults(tmp_path: Path) -> None:
    code = "import os; print(os.environ['HF_HUB_OFFLINE'], os.environ['OMP_WAIT_POLICY'], os.getcwd())"
    result = run_entrypoint([sys.executable, "-c", code], tmp_path, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == ["1", "PASSIVE", str(tmp_path)]
    usage = run_entrypoint(["help"], tmp_path, timeout=60)
    assert usage.returncode == 0 and "entrypoint.sh reload" in usage.stdout and "set -euo" not in usage.stdout


# --- probe.py reload against a stub fleet (independent of the service's admin routes) ---------


class _StubReplica:
    """A loopback HTTP server that answers ``POST /admin/reload`` like a replica: 200 for the key, else 403."""

    def __init__(self, key: str = ADMIN_KEY, status: int | None = None) -> None:
        self.key, self.status, self.requests = key, status, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                stub.requests.append((self.path, self.headers.get(probe.API_KEY_HEADER)))
                ok = self.headers.get(probe.API_KEY_HEADER) == stub.key
                status = stub.status or (200 if ok else 403)
                body = json.dumps({"index_version": "v2"} if status == 200 else {"error": "no", "type": "forbidden"})
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_StubReplica":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_reload_posts_the_key_to_every_target(capsys) -> None:
    with _StubReplica() as first, _StubReplica() as second:
        assert probe.reload_fleet([first.target, second.target], ADMIN_KEY) == 0
    assert first.requests == second.requests == [(probe.RELOAD_PATH, ADMIN_KEY)]
    out = capsys.readouterr().out
    assert out.count("HTTP 200") == 2 and "2 replica(s) reloaded" in out and ADMIN_KEY not in out


def test_reload_stops_at_the_first_refusal(capsys) -> None:
    with _StubReplica(status=409) as refusing, _StubReplica() as untouched:
        assert probe.reload_fleet([refusing.target, untouched.target], ADMIN_KEY) == 1
    assert len(refusing.requests) == 1 and untouched.requests == []
    captured = capsys.readouterr()
    assert "HTTP 409" in captured.out and "0 replica(s) reloaded before it" in captured.err


def test_reload_through_the_entrypoint_reads_targets_and_key_from_the_environment(tmp_path: Path) -> None:
    with _StubReplica() as replica:
        ok = run_entrypoint(["reload"], tmp_path, entrypoint_env(MD2PR_ADMIN_API_KEY=ADMIN_KEY, MD2PR_RELOAD_TARGETS=replica.target))
        missing_key = run_entrypoint(["reload"], tmp_path, entrypoint_env(MD2PR_RELOAD_TARGETS=replica.target))
    assert ok.returncode == 0 and "1 replica(s) reloaded" in ok.stdout
    assert missing_key.returncode == 2 and "MD2PR_ADMIN_API_KEY is not set" in missing_key.stderr
    assert replica.requests == [(probe.RELOAD_PATH, ADMIN_KEY)]


def test_resolve_expands_a_name_to_all_its_addresses() -> None:
    host, port, addresses = probe.resolve("localhost:8000")
    assert host == "localhost" and port == 8000 and "127.0.0.1" in addresses
    assert addresses == sorted(set(addresses))
    with pytest.raises(ValueError, match="HOST:PORT"):
        probe.resolve("service")


def test_requirements_helper_reads_pyproject(tmp_path: Path) -> None:
    script = REPO / "docker" / "requirements.py"
    deps = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml")], capture_output=True, text=True)
    assert deps.returncode == 0 and "torch==2.13.0" in deps.stdout.splitlines() and "fastapi" in deps.stdout
    test = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "--extra", "test"], capture_output=True, text=True)
    assert any(line.startswith("pytest") for line in test.stdout.splitlines()) and "torch" not in test.stdout
    bad = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "--extra", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "'nope'" in bad.stderr
