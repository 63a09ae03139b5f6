"""Real passages and queries for the index benchmarks, encoded once and cached.

The ~40k passages are SciFact's corpus (5,183) plus the union of the TREC DL19 and DL21/22
candidate pools (MS MARCO v1/v2 passages with real text). SciFact vectors are read back from a
Flat SciFact index built with the same encoder when one exists (``make index``); the pool
passages are encoded by this project's own build job (``md2pr-build-index``, Flat, resumable),
so the cache is simply an index root under ``artifacts/bench/``.

Run ``python benchmarks/index_data.py`` to build the cache (about 10-30 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from retrieval.datasets import read_beir_queries, read_dl_pool_json, read_trec_topics  # noqa: E402
from retrieval.index import IndexArtifact  # noqa: E402
from retrieval.index_versions import resolve_index_dir  # noqa: E402
from retrieval.paths import artifacts_dir, data_dir  # noqa: E402

BENCH_DIR = artifacts_dir() / "bench"
POOL_CORPUS = BENCH_DIR / "dl-pools-corpus.jsonl"
POOL_INDEX = BENCH_DIR / "indexes" / "dl-pools"
SCIFACT_INDEX = artifacts_dir() / "indexes" / "scifact"


def pool_files() -> list[Path]:
    root = data_dir() / "msmarco_trec_dl"
    return sorted(root.glob("dl19/*/retrieve_results_dl19.json")) + sorted(root.glob("dl21_dl22_v2/*/retrieve_results_dl2*.json"))


def write_pool_corpus(path: Path = POOL_CORPUS) -> int:
    """The union of every DL pool's passages as a BEIR-style corpus.jsonl; returns the count."""
    seen: dict[str, str] = {}
    for file in pool_files():
        for docid, passage in read_dl_pool_json(file).passages.items():
            seen.setdefault(docid, passage.text)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for docid, text in seen.items():
            handle.write(json.dumps({"_id": docid, "title": "", "text": text}) + "\n")
    return len(seen)


def queries() -> dict[str, str]:
    """Real queries for latency and recall: SciFact test claims and the DL19/DL21/DL22 topics."""
    out: dict[str, str] = {}
    scifact = data_dir() / "scifact"
    test_ids = {line.split("\t")[0] for line in (scifact / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    for qid, text in read_beir_queries(scifact / "queries.jsonl").items():
        if qid in test_ids:
            out[f"scifact-{qid}"] = text
    dl = data_dir() / "msmarco_trec_dl"
    for name, path in [("dl19", dl / "dl19" / "topics.dl19-passage.txt"), ("dl21", dl / "dl21_dl22_v2" / "topics.dl21.txt"),
                       ("dl22", dl / "dl21_dl22_v2" / "topics.dl22.txt")]:
        for qid, text in read_trec_topics(path).items():
            out[f"{name}-{qid}"] = text
    return out


def load_vectors() -> tuple[np.ndarray, list[str]]:
    """All ~40k passage vectors ``[n, 384]`` and their docids (SciFact first, then the pools)."""
    parts, ids = [], []
    for root in (SCIFACT_INDEX, POOL_INDEX):
        index = IndexArtifact.open(resolve_index_dir(root))
        parts.append(index.all_vectors())
        prefix = "scifact-" if root == SCIFACT_INDEX else "msmarco-"
        ids += [prefix + d for d in index.docids]
        index.close()
    return np.concatenate(parts), ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the cached ~40k passage vectors for the index benchmarks.")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from index_build.cli import main as build_main

    count = write_pool_corpus()
    print(f"{count} DL pool passages -> {POOL_CORPUS}")
    base = ["--threads", str(args.threads)] if args.threads else []
    if build_main(["--corpus", str(data_dir() / "scifact"), "--index-root", str(SCIFACT_INDEX), "--if-missing", *base]) != 0:
        return 1
    if build_main(["--corpus", str(POOL_CORPUS), "--index-root", str(POOL_INDEX), "--if-missing", *base]) != 0:
        return 1
    vectors, ids = load_vectors()
    print(f"{len(ids)} vectors of dimension {vectors.shape[1]} ready")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
