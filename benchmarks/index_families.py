"""Recall@10, query latency, memory and build time of every index family on ~43k real passages.

The passages are SciFact plus the TREC DL19/DL21/DL22 candidate pools, encoded once with the
default encoder (``python benchmarks/index_data.py``); the queries are the real SciFact test
claims and DL topics, encoded with the same encoder. Each family is built by the project's
own build job (:func:`index_build.build.assemble`: training on a sample, the quality gate and
its ``nprobe``/``efSearch`` tuning), then searched with its recorded defaults. Recall@10 is
against exact search (``Flat``) for the same real queries.

Run: ``python benchmarks/index_families.py`` -> ``benchmarks/results/index-families.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import faiss  # noqa: E402
from index_data import POOL_CORPUS, POOL_INDEX, load_vectors, queries  # noqa: E402
from service_common import write_report  # noqa: E402

from index_build.build import DEFAULT_GATE_QUERIES, BuildOptions, _gate_sample, assemble  # noqa: E402
from index_build.quality import RECALL_K, SNIPPET_WORDS, ArrayVectors, snippet_queries  # noqa: E402
from retrieval.datasets import iter_corpus  # noqa: E402
from retrieval.encoder import DualEncoder  # noqa: E402
from retrieval.index import EncoderRef, describe_factory, make_search_parameters  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, data_dir  # noqa: E402
from retrieval.runtime import configure_threads  # noqa: E402

FAMILIES = ["Flat", "HNSW32", "HNSW32,SQ8", "IVF512,Flat", "IVF512,PQ48", "OPQ48,IVF512,PQ48"]


def partial_vectors() -> tuple[np.ndarray, list[str]]:
    """SciFact's vectors plus the DL pool shards already finished by an unfinished cache build."""
    from index_data import SCIFACT_INDEX

    from index_build.shards import BuildState, ShardStore, ShardVectors
    from retrieval.index import IndexArtifact
    from retrieval.index_versions import resolve_index_dir

    scifact = IndexArtifact.open(resolve_index_dir(SCIFACT_INDEX))
    parts = [scifact.all_vectors()]
    ids = ["scifact-" + d for d in scifact.docids]
    for state_file in sorted((POOL_INDEX / "staging").glob("*/_build/state.json")):
        state = BuildState.model_validate_json(state_file.read_text())
        source = ShardVectors(ShardStore(state_file.parent.parent, state), scifact.manifest.dimension)
        parts += [chunk for _, chunk in source.iter_chunks()]
        ids += [f"msmarco-row{i}" for i in range(source.count)]
    return np.concatenate(parts), ids


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def latency(index, queries: np.ndarray, params: dict, k: int = RECALL_K) -> dict:
    search_params = make_search_parameters(index, params)
    kwargs = {"params": search_params} if search_params is not None else {}
    index.search(queries[:8], k, **kwargs)  # warm up
    times = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None, :], k, **kwargs)
        times.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    index.search(queries, k, **kwargs)
    batch_s = time.perf_counter() - t0
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "batch_qps": round(len(queries) / batch_s, 1),
    }


def recall(found: np.ndarray, exact_rows: np.ndarray, exact_scores: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> float:
    """Recall@k against exact search; a result scoring at least the k-th exact score counts (ties)."""
    k = exact_rows.shape[1]
    hits = 0
    for i, rows in enumerate(found):
        rows = rows[rows >= 0]
        hits += int(((vectors[rows] @ queries[i]) >= exact_scores[i, -1] - 1e-5).sum())
    return hits / (len(found) * k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factory", action="append", help=f"families to measure (default: {', '.join(FAMILIES)})")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--partial", action="store_true",
        help="while the pool passages are still being encoded, use SciFact plus the pool shards finished so far",
    )
    parser.add_argument("--output", type=Path, default=HERE / "results" / "index-families.json")
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads)
    vectors, ids = partial_vectors() if args.partial else load_vectors()
    encoder = DualEncoder.from_pretrained(BUILTIN_MODEL)
    query_texts = queries()
    qv = encoder.encode_queries(list(query_texts.values()), batch_size=64)  # [q, 384]
    scores = qv @ vectors.T
    exact_rows = np.argsort(-scores, axis=1)[:, :RECALL_K]
    exact_scores = np.take_along_axis(scores, exact_rows, axis=1)
    del scores
    ref = EncoderRef(source=encoder.source, fingerprint=encoder.fingerprint)
    gate = {}
    if not args.partial:  # the job's default gate queries: encoded snippets of sampled passages
        texts = list(iter_corpus(data_dir() / "scifact")) + list(iter_corpus(POOL_CORPUS))
        rows = _gate_sample(len(texts), DEFAULT_GATE_QUERIES, np.random.default_rng(1))
        gate = {"query_vectors": encoder.encode_queries(snippet_queries([texts[r] for r in rows.tolist()]), batch_size=64),
                "query_label": f"query-encoded {SNIPPET_WORDS}-word passage snippets"}
    results = []
    for factory in args.factory or FAMILIES:
        info = describe_factory(vectors.shape[1], factory)
        staging = Path(tempfile.mkdtemp(prefix="family-"))
        try:
            before = rss_mb()
            started = time.monotonic()
            options = BuildOptions(factory=factory, min_recall=0.0, target_recall=0.95, lexical=None, **gate)  # dense only
            manifest = assemble(staging, ArrayVectors(vectors), info, options, ref, {}, started)
            build_s = time.monotonic() - started
            size = (staging / "index.faiss").stat().st_size
            index = faiss.read_index(str(staging / "index.faiss"))
            loaded = rss_mb()
            params = manifest.search_params
            search_params = make_search_parameters(index, params)
            kwargs = {"params": search_params} if search_params is not None else {}
            _, found = index.search(qv, RECALL_K, **kwargs)
            row = {
                "factory": factory,
                "family": info.family,
                "count": int(index.ntotal),
                "params": params,
                "recall_at_10": round(recall(found, exact_rows, exact_scores, vectors, qv), 4),
                "gate_recall_at_10": manifest.quality["recall_at_k"] if manifest.quality else None,
                "gate_queries": manifest.quality["query_source"] if manifest.quality else None,
                "gate_sweep": manifest.quality["sweep"] if manifest.quality else [],
                "build_s": round(build_s, 2),
                "train_s": manifest.build.get("train_s"),
                "index_mb": round(size / 2**20, 1),
                "bytes_per_vector": round(size / index.ntotal, 1),
                "rss_load_mb": round(loaded - before, 1),
                **latency(index, qv, params),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
            del index
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report = {
        "kind": "index_families",
        "command": "python benchmarks/index_families.py" + "".join(f" --factory {f}" for f in args.factory or [])
        + (" --partial" if args.partial else "") + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {**machine(), "threads": threads},
        "corpus": {"passages": int(len(ids)), "dimension": int(vectors.shape[1]), "encoder": encoder.source,
                   "source": "SciFact corpus + TREC DL19/DL21/DL22 candidate pools (real text)"},
        "queries": {"count": int(len(qv)), "source": "SciFact test claims + DL19/DL21/DL22 topics, encoded with the same encoder"},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "families": results,
    }
    write_report(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
