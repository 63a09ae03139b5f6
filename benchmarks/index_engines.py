"""Encoding throughput of the build's two engines, local and ray, on the same SciFact slice.

Builds the first ``--passages`` passages of SciFact with ``md2pr-build-index`` twice in this
process (``--engine local``, then ``--engine ray`` on a local Ray cluster of ``--threads`` CPUs
started by the build), each into a fresh index root, and reports for each: the encoding
throughput the build records (``passages_per_s`` = encoded passages / seconds spent encoding,
which for Ray includes starting the actor pool and loading the model in each actor), the wall
time of the whole command, and whether the two versions hold identical vectors.

Run (under the shared lock): ``flock /tmp/heavy.lock python benchmarks/index_engines.py``
-> ``benchmarks/results/index-engines.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from service_common import command_line, machine_facts, write_report  # noqa: E402

from retrieval.index import IndexArtifact  # noqa: E402
from retrieval.index_versions import resolve_index_dir  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, data_dir  # noqa: E402


def vectors(root: Path) -> np.ndarray:
    with IndexArtifact.open(resolve_index_dir(root)) as artifact:
        return artifact.all_vectors()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=data_dir() / "scifact" / "corpus.jsonl")
    parser.add_argument("--passages", type=int, default=1024)
    parser.add_argument("--encoder", default=BUILTIN_MODEL)
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "index-engines.json")
    args = parser.parse_args(argv)
    from index_build.cli import main as build_main

    facts = machine_facts(args.threads)
    work = Path(tempfile.mkdtemp(prefix="engines-"))
    corpus = work / "corpus.jsonl"
    with args.corpus.open(encoding="utf-8") as lines:
        corpus.write_text("".join(itertools.islice(lines, args.passages)), encoding="utf-8")
    runs = {}
    for engine in ("local", "ray"):
        root = work / engine
        argv_build = ["--corpus", str(corpus), "--index-root", str(root), "--encoder", args.encoder, "--no-bm25",
                      "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size),
                      "--threads", str(args.threads), "--gate-queries", "50", "--engine", engine]
        t0 = time.monotonic()
        if build_main(argv_build) != 0:
            raise SystemExit(f"error: the {engine} build failed")
        wall = time.monotonic() - t0
        build = json.loads((resolve_index_dir(root) / "manifest.json").read_text())["build"]
        runs[engine] = {
            "passages_per_s": build["passages_per_s"],
            "encode_s": build["encode_s"],
            "command_wall_s": round(wall, 2),
            "workers": build.get("workers"),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        }
        print(engine, runs[engine], flush=True)
    a, b = vectors(work / "local"), vectors(work / "ray")
    report = {
        "kind": "index_engines",
        "command": command_line(argv),
        "machine": {**facts, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "corpus": f"first {args.passages} passages of {args.corpus}",
        "encoder": args.encoder,
        "shard_size": args.shard_size,
        "batch_size": args.batch_size,
        "runs": runs,
        "ray_over_local_throughput": round(runs["ray"]["passages_per_s"] / runs["local"]["passages_per_s"], 3),
        "vectors_identical": bool(a.shape == b.shape and np.array_equal(a, b)),
        "max_abs_difference": float(np.abs(a - b).max()) if a.shape == b.shape else None,
    }
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
