"""Encoder backends side by side: parity with torch on SciFact, and single-query latency in-process.

1. **Export** the packaged all-MiniLM-L6-v2, or ``--encoder``'s model (``md2pr-export``'s code;
   an up-to-date export is reused) and **check parity** of every ONNX backend against torch on SciFact's test split:
   vectors of the 300 judged claims and all 5,183 passages (max abs difference, min cosine),
   nDCG@10 with the backend on both sides and on the query side over torch's corpus vectors.
   The verdicts are written to the export's ``parity.json``, exactly as ``md2pr-export
   --parity-dataset`` writes them (this script *is* that check, plus timing).
2. **Latency**: ``DualEncoder.encode_queries([claim])`` (tokenise, forward, pool, normalise:
   what the service runs per batch of one), batch 1, the 300 real claims, for every backend at
   1 and 2 threads (torch/FAISS threads and ONNX Runtime intra-op threads alike), in one
   process, the configurations alternated round by round so drifting load hits all alike.

Run: ``flock /tmp/heavy.lock python benchmarks/backend_parity.py`` ->
``benchmarks/results/backend-parity.json`` (``--skip-parity`` times only, using the record
already there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_families import machine  # noqa: E402

from index_build.export_cli import run_parity  # noqa: E402
from retrieval.backends import BACKENDS, PARITY_FILE, ParityRecord, read_record  # noqa: E402
from retrieval.datasets import load_dataset  # noqa: E402
from retrieval.encoder import DualEncoder  # noqa: E402
from retrieval.onnx_export import export_onnx  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, data_dir  # noqa: E402
from retrieval.runtime import configure_logging, configure_threads  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_queries(encoder: DualEncoder, queries: list[str]) -> list[float]:
    """Milliseconds of ``encode_queries([q])`` for each query, in order."""
    out = []
    for query in queries:
        t0 = time.perf_counter()
        encoder.encode_queries([query])
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=data_dir() / "scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts timed (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration, alternated")
    parser.add_argument("--skip-parity", action="store_true", help="time only; report the parity record already written")
    parser.add_argument("--encoder", default=BUILTIN_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "backend-parity.json")
    args = parser.parse_args(argv)
    configure_logging()
    load_start = [round(x, 2) for x in os.getloadavg()]
    threads_max = configure_threads(max(args.threads))
    encoder = DualEncoder.from_pretrained(args.encoder)
    directory, manifest = export_onnx(encoder)
    parity_s = None
    if not args.skip_parity:
        t0 = time.perf_counter()
        run_parity(encoder, directory, args.dataset, args.split, list(manifest.files), threads_max, 32)
        parity_s = round(time.perf_counter() - t0, 1)
    record: ParityRecord = read_record(directory / PARITY_FILE, ParityRecord)

    queries = list(load_dataset(args.dataset, args.split).queries.values())
    configs = [(backend, threads) for threads in args.threads for backend in BACKENDS]
    encoders: dict[tuple[str, int], DualEncoder] = {}
    for backend, threads in configs:
        configure_threads(threads)
        # timed even when its parity failed (the row says so): what the check refused, and at what speed
        encoders[(backend, threads)] = encoder if backend == "torch" else encoder.with_backend(backend, threads, require_parity=False)
    samples: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for round_no in range(args.rounds):
        order = configs if round_no % 2 == 0 else configs[::-1]
        for backend, threads in order:
            configure_threads(threads)  # torch/FAISS threads; the ONNX session has its own, set at load
            time_queries(encoders[(backend, threads)], queries[:20])  # warm up after the switch
            times = time_queries(encoders[(backend, threads)], queries)
            samples[(backend, threads)] += times
            print(f"round {round_no}: {backend} x{threads}: p50 {statistics.median(times):.2f} ms", flush=True)
    latency = [
        {
            "backend": backend,
            "threads": threads,
            "calls": len(values),
            "p50_ms": round(statistics.median(values), 3),
            "p90_ms": round(_percentile(values, 0.9), 3),
            "p99_ms": round(_percentile(values, 0.99), 3),
            "mean_ms": round(statistics.fmean(values), 3),
            "parity_passed": True if backend == "torch" else bool(
                record.backends.get(backend) and record.backends[backend].passed),
        }
        for (backend, threads), values in samples.items()
    ]
    passing = [row for row in latency if row["parity_passed"]]
    fastest = min(passing, key=lambda row: row["p50_ms"])
    report = {
        "kind": "backend_parity",
        "command": "python benchmarks/backend_parity.py"
        + (f" --encoder {args.encoder}" if args.encoder != BUILTIN_MODEL else "")
        + (f" --output {args.output}" if args.output != HERE / "results" / "backend-parity.json" else "")
        + (f" --threads {' '.join(map(str, args.threads))}" if args.threads != [1, 2] else "")
        + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
        + (" --skip-parity" if args.skip_parity else ""),
        "machine": {**machine(), "threads": f"{' and '.join(map(str, args.threads))} (per latency row; "
                    f"parity at {threads_max})", "load_average_at_start": load_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)")},
        "model": args.encoder,
        "fingerprint": encoder.fingerprint[:12],
        "export": {"directory": str(directory), "exporter": manifest.exporter, "versions": manifest.versions,
                   "files": {k: {"file": v.file, "mb": round(v.bytes / 1e6, 1)} for k, v in manifest.files.items()}},
        "parity_seconds": parity_s,
        "parity": {name: parity.model_dump() for name, parity in record.backends.items()},
        "latency": {"queries": f"SciFact {args.split} claims, batch 1", "per_config": latency,
                    "fastest_passing": {"backend": fastest["backend"], "threads": fastest["threads"],
                                        "p50_ms": fastest["p50_ms"]}},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"parity": {k: v["reason"] for k, v in report["parity"].items()},
                      "fastest_passing": report["latency"]["fastest_passing"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
