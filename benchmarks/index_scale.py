"""Build time, peak memory and query latency of the build job at 1M vectors (synthetic, 384-d).

The vectors are a clustered Gaussian mixture, unit-normalised, written as the encoding stage
would write them (float32 ``.npy`` shards recorded in a build state); each family is then
assembled by the real job (:func:`index_build.build.assemble`: training on a sample, adding
shard by shard, the stored vectors, the quality gate with tuning) in a child process whose
peak resident memory is reported, to show the job stays well within the machine's 24 GiB.

Run: ``python benchmarks/index_scale.py`` -> ``benchmarks/results/index-scale.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_families import machine  # noqa: E402
from service_common import write_report  # noqa: E402

from retrieval.paths import artifacts_dir  # noqa: E402

WORK = artifacts_dir() / "bench" / "scale"
FAMILIES = ["Flat", "IVF1024,Flat", "IVF1024,PQ48"]
KEY = {"corpus": "synthetic", "encoder": "synthetic", "dimension": 384, "batch_size": 0, "shard_size": 0}


def make_shards(staging: Path, count: int, dim: int, shard_rows: int, seed: int = 0) -> None:
    """Write ``count`` clustered unit vectors as recorded shards (what the encoding stage leaves)."""
    from index_build.shards import ShardStore
    from retrieval.types import Passage

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4096, dim)).astype(np.float32)  # noise as large as the centres: clusters overlap
    store = ShardStore.create(staging, {**KEY, "count": count})
    for number, start in enumerate(range(0, count, shard_rows)):
        n = min(shard_rows, count - start)
        which = rng.integers(0, len(centres), n)
        vectors = centres[which] + rng.normal(scale=1.0, size=(n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.record(number, [Passage(f"s{start + i}", "", "") for i in range(n)], f"synthetic-{number}", vectors)
    store.release()


def child(staging: Path, factory: str, out: Path, threads: int | None) -> int:
    """Assemble one family from the shards in ``staging`` (run in its own process)."""
    import faiss

    from index_build.build import BuildOptions, assemble
    from index_build.shards import BuildState, ShardStore, ShardVectors
    from retrieval.index import EncoderRef, describe_factory, make_search_parameters
    from retrieval.runtime import configure_threads

    threads = configure_threads(threads)
    target = staging.parent / f"build-{factory.replace(',', '_')}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    state = BuildState.model_validate_json((staging / "_build" / "state.json").read_text())
    source = ShardVectors(ShardStore(staging, state), state.key["dimension"])
    info = describe_factory(source.dimension, factory)
    started = time.monotonic()
    options = BuildOptions(factory=factory, min_recall=0.0, gate_queries=1000, lexical=None)  # no passage text here
    manifest = assemble(target, source, info, options, EncoderRef(source="synthetic", fingerprint="0" * 64), {}, started)
    build_s = time.monotonic() - started
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    index = faiss.read_index(str(target / "index.faiss"))
    rng = np.random.default_rng(1)
    queries = source.take(rng.choice(source.count, 200, replace=False)) + rng.normal(scale=0.02, size=(200, source.dimension)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    params = make_search_parameters(index, manifest.search_params)
    kwargs = {"params": params} if params is not None else {}
    index.search(queries[:4], 10, **kwargs)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None, :], 10, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
    row = {
        "factory": factory,
        "count": int(index.ntotal),
        "threads": threads,
        "params": manifest.search_params,
        "gate_recall_at_10": manifest.quality["recall_at_k"] if manifest.quality else None,
        "build_s": round(build_s, 1),
        "train_s": manifest.build.get("train_s"),
        "add_s": manifest.build.get("add_s"),
        "gate_s": manifest.build.get("gate_s"),
        "index_gb": round((target / "index.faiss").stat().st_size / 2**30, 3),
        "peak_rss_gb_build": round(peak_build, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
    }
    out.write_text(json.dumps(row))
    shutil.rmtree(target, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--factory", action="append")
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads of the job (default: all cores)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "index-scale.json")
    parser.add_argument("--child", nargs=3, metavar=("STAGING", "FACTORY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), args.child[1], Path(args.child[2]), args.threads)
    staging = WORK / f"mixture-{args.count}-{args.dimension}"
    state = staging / "_build" / "state.json"
    if not state.is_file():
        shutil.rmtree(staging, ignore_errors=True)
        t0 = time.monotonic()
        make_shards(staging, args.count, args.dimension, 65536)
        print(f"wrote {args.count} synthetic vectors in {time.monotonic() - t0:.0f}s", flush=True)
    rows = []
    for factory in args.factory or FAMILIES:
        out = WORK / "row.json"
        t0 = time.monotonic()
        threads = ["--threads", str(args.threads)] if args.threads else []
        subprocess.run([sys.executable, __file__, "--child", str(staging), factory, str(out), *threads], check=True)
        row = json.loads(out.read_text())
        row["wall_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "kind": "index_scale",
        "command": f"python benchmarks/index_scale.py --count {args.count}" + "".join(f" --factory {f}" for f in args.factory or [])
        + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {**machine(), "threads": rows[0]["threads"] if rows else None, "memory_gb": round(int(Path('/proc/meminfo').read_text().split()[1]) / 2**20, 1)},
        "vectors": {"count": args.count, "dimension": args.dimension, "kind": "synthetic: 4,096 Gaussian clusters, noise as large as the centres, unit norm"},
        "families": rows,
    }
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
