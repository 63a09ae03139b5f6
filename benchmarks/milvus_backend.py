"""The Milvus index backend against FAISS Flat on the same SciFact vectors: quality, HTTP latency, hot swap.

1. Starts a milvus-lite server (``python -m milvus_lite server``, pip milvus-lite; a temporary
   data directory, a free loopback port).
2. Takes a published FAISS Flat version of SciFact (default: the pipeline's MiniLM base index)
   and writes a Milvus version of the *same vectors* with the build's own Milvus stage
   (:func:`index_build.build.assemble_milvus`: collection, quality gate, manifest); the passage
   store, docids and BM25 index are hard links of the FAISS version's. A second Milvus version
   (its own collection) is made the same way for the swap test.
3. nDCG@10 / MRR@10 / R@100 on SciFact test through :class:`retrieval.retriever.Retriever` on both
   (in-process, dense mode), and the largest score difference of the top-10 lists.
4. ``md2pr-serve`` on each root in turn: closed-loop ``POST /search`` (top_k 10, SciFact test
   claims) at ``--clients`` for ``--duration`` s after a warm-up; p50/p95/p99 and QPS side by side.
5. The swap benchmark of ``benchmarks/service_swap.py`` (its ``soak``) on the Milvus root:
   clients search while ``CURRENT`` and the Milvus alias switch between the two Milvus versions
   (``retrieval.index_versions.set_current``) and the service reloads; failures, stale answers.

Run (under the shared lock): ``flock /tmp/heavy.lock python benchmarks/milvus_backend.py``
-> ``benchmarks/results/milvus-backend.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import service_swap  # noqa: E402
from service_common import (  # noqa: E402
    PROJECT,
    closed_loop,
    command_line,
    machine_facts,
    server,
    use_service_environment,
    write_report,
)

DEFAULT_SOURCE = PROJECT / "artifacts" / "experiments" / "scifact-cpu" / "indexes" / "base"


class ArtifactVectors:
    """An open index's exact vectors as the build's ``VectorSource``."""

    def __init__(self, artifact) -> None:
        self._artifact = artifact
        self.count = artifact.manifest.count
        self.dimension = artifact.manifest.dimension

    def iter_chunks(self):
        return self._artifact.iter_vectors()

    def take(self, rows):
        return self._artifact.take_vectors(rows)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_milvus(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (data.parent / "milvus.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"error: milvus-lite did not start: {(data.parent / 'milvus.log').read_text()[-500:]}")
            time.sleep(0.2)


def link_tree(source: Path, target: Path, skip: set[str]) -> None:
    """Hard-link every file of ``source`` under ``target`` except the names in ``skip``."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if rel.parts[0] in skip:
            continue
        if path.is_dir():
            (target / rel).mkdir(parents=True, exist_ok=True)
        else:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / rel)


def milvus_version(root: Path, source_dir: Path, uri: str) -> str:
    """A Milvus version of the FAISS version in ``source_dir`` (same vectors), published in ``root``; returns its name."""
    from index_build.build import BuildOptions, _gate_sample, assemble_milvus, milvus_ref
    from retrieval.index import FAISS_FILE, MANIFEST_FILE, VECTORS_FILE, IndexArtifact, describe_milvus
    from retrieval.index_versions import new_staging_dir, publish

    artifact = IndexArtifact.open(source_dir)
    try:
        staging = new_staging_dir(root, "milvus")
        link_tree(source_dir, staging, {FAISS_FILE, MANIFEST_FILE, VECTORS_FILE})
        options = BuildOptions(factory="Flat", index_backend="milvus", milvus_uri=uri, lexical=None, gate_queries=100)
        ref = milvus_ref(staging, options)
        source = ArtifactVectors(artifact)
        query_rows = _gate_sample(source.count, options.gate_queries, np.random.default_rng(0))
        extra = {"lexical": artifact.manifest.lexical, "fusion": artifact.manifest.fusion}
        build = {"copied_from": str(source_dir), "note": "vectors of the FAISS version, written by assemble_milvus"}
        assemble_milvus(staging, ref, source, describe_milvus("FLAT", {}), options, artifact.manifest.encoder, build,
                        time.monotonic(), query_rows, manifest_extra=extra)
    finally:
        artifact.close()
    return publish(root, staging)


def quality(index_path: Path, data: Path) -> tuple[dict, dict]:
    from retrieval.datasets import load_dataset
    from retrieval.metrics import evaluate_run
    from retrieval.retriever import Retriever

    dataset = load_dataset(data / "scifact", "test")
    retriever = Retriever.open(index_path)
    try:
        t0 = time.monotonic()
        run = retriever.search_run(dataset.queries, top_k=100)
        seconds = time.monotonic() - t0
    finally:
        retriever.close()
    metrics = evaluate_run(dataset.qrels, run)
    return {k: round(v, 4) for k, v in metrics.items() if k in ("nDCG@10", "MRR@10", "R@100")} | {"search_run_s": round(seconds, 2)}, run


def http_latency(root: Path, queries: list[str], args: argparse.Namespace, log: Path) -> dict:
    env = {"MD2PR_INDEX": str(root), "MD2PR_TORCH_THREADS": str(args.threads), "MD2PR_BACKEND": "torch"}

    async def request(client, query):
        return await client.post("/search", json={"query": query, "top_k": 10})

    with server(env, log) as url:
        return asyncio.run(closed_loop(url, queries, args.clients, args.warmup, args.duration, request))


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_SOURCE, help="a FAISS Flat SciFact index root or version")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MD2PR_DATA_DIR", PROJECT.parent / "shared" / "data")))
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--swap-clients", type=int, default=4)
    parser.add_argument("--swap-duration", type=float, default=30.0)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "milvus-backend.json")
    args = parser.parse_args(argv)
    from retrieval.datasets import load_dataset
    from retrieval.index import read_manifest
    from retrieval.index_versions import VERSIONS_DIR, resolve_index_dir, set_current

    facts = machine_facts(args.threads)
    source_dir = resolve_index_dir(args.index)
    source_manifest = read_manifest(source_dir)
    if source_manifest.factory != "Flat" or source_manifest.backend != "faiss":
        raise SystemExit(f"error: {source_dir} is not a FAISS Flat version")
    work = Path(tempfile.mkdtemp(prefix="milvus-bench-"))
    (work / "milvus-data").mkdir()
    process, uri = start_milvus(work / "milvus-data")
    try:
        faiss_root, milvus_root = work / "faiss", work / "milvus"
        (faiss_root / VERSIONS_DIR).mkdir(parents=True)
        link_tree(source_dir, faiss_root / VERSIONS_DIR / source_dir.name, set())
        set_current(faiss_root, source_dir.name)
        t0 = time.monotonic()
        first = milvus_version(milvus_root, source_dir, uri)
        write_s = time.monotonic() - t0
        second = milvus_version(milvus_root, source_dir, uri)
        set_current(milvus_root, first)
        first_manifest = read_manifest(milvus_root / VERSIONS_DIR / first)
        print("milvus versions", first, second, flush=True)

        faiss_quality, faiss_run = quality(faiss_root, args.data)
        milvus_quality, milvus_run = quality(milvus_root, args.data)
        same_top10 = 0
        max_diff = 0.0
        for qid, docs in faiss_run.items():
            a = sorted(docs.items(), key=lambda kv: -kv[1])[:10]
            b = sorted(milvus_run[qid].items(), key=lambda kv: -kv[1])[:10]
            same_top10 += [d for d, _ in a] == [d for d, _ in b]
            max_diff = max(max_diff, max(abs(x - y) for (_, x), (_, y) in zip(a, b)))
        print("quality", faiss_quality, milvus_quality, flush=True)

        dataset = load_dataset(args.data / "scifact", "test")
        queries = list(dataset.queries.values())
        latency = {
            "faiss": http_latency(faiss_root, queries, args, work / "faiss-server.log"),
            "milvus": http_latency(milvus_root, queries, args, work / "milvus-server.log"),
        }
        print("latency", {k: (v["p50_ms"], v["p95_ms"], v["qps"]) for k, v in latency.items()}, flush=True)

        service_swap.point_current = lambda root, version: set_current(root, version)  # CURRENT and the Milvus alias
        key = secrets.token_urlsafe(16)
        env = {"MD2PR_INDEX": str(milvus_root), "MD2PR_ADMIN_API_KEY": key, "MD2PR_TORCH_THREADS": str(args.threads),
               "MD2PR_BACKEND": "torch"}
        swap_args = argparse.Namespace(clients=args.swap_clients, duration=args.swap_duration, swaps=args.swaps, via="reload")
        with server(env, work / "swap-server.log") as url:
            swap = asyncio.run(service_swap.soak(url, milvus_root, [first, second], queries, swap_args, key))
        print("swap", {k: swap[k] for k in ("requests", "failed", "stale_answers", "swaps_completed")}, flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = {
        "kind": "milvus_backend",
        "command": command_line(argv),
        "machine": {**facts, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "source_index": str(source_dir),
        "encoder": source_manifest.encoder.source,
        "count": source_manifest.count,
        "milvus": {"server": "milvus-lite (python -m milvus_lite server, gRPC on loopback)",
                   "index_type": first_manifest.milvus.index_type, "metric": first_manifest.milvus.metric,
                   "write_and_gate_s": round(write_s, 2), "gate_recall_at_10": first_manifest.quality["recall_at_k"]},
        "quality": {"dataset": "scifact test", "faiss_flat": faiss_quality, "milvus_flat": milvus_quality,
                    "ndcg10_difference": round(milvus_quality["nDCG@10"] - faiss_quality["nDCG@10"], 4),
                    "queries_with_identical_top10": same_top10, "queries": len(faiss_run),
                    "max_top10_score_difference": float(f"{max_diff:.3g}")},
        "http": {"clients": args.clients, "duration_s": args.duration, "threads": args.threads, "top_k": 10, **latency},
        "swap": {"clients": args.swap_clients, "duration_s": args.swap_duration, **swap},
    }
    write_report(report, args.output)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
