"""``md2pr-evaluate``: BM25 and/or a dense index on a dataset split -> metrics table and JSON.

Example::

    md2pr-evaluate --dataset ../shared/data/scifact --split test \\
        --retriever bm25 --retriever dense --index artifacts/indexes/scifact --output scifact.json

The JSON written by ``--output`` is ``{"command", "machine", "dataset", "split", "queries", "depth",
"relevance_level", "systems": {name: {"metrics": {measure: value}, "config": {...}}}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .bm25 import BM25Config, BM25Index
from .datasets import Dataset, load_dataset
from .errors import RetrievalError
from .fusion import FusionConfig, fuse
from .metrics import evaluate_run, format_table, write_trec_run
from .paths import data_dir
from .retriever import Retriever
from .runtime import configure_logging, configure_threads, run_main
from .types import Run

#: Per query id, ``(docid, score)`` pairs best first.
Rankings = dict[str, list[tuple[str, float]]]

logger = logging.getLogger("evaluate")


def bm25_rankings(dataset: Dataset, depth: int, config: BM25Config) -> tuple[Rankings, dict[str, Any]]:
    """BM25 over the dataset's corpus (title + text): rankings and the configuration used."""
    index = BM25Index.build(dataset.iter_corpus(), config)
    qids = list(dataset.queries)
    hits = index.search([dataset.queries[q] for q in qids], depth)
    return dict(zip(qids, hits)), {"bm25": config.to_dict(), "corpus_size": len(index)}


def dense_rankings(
    dataset: Dataset, depth: int, index_path: Path, encoder_path: str | None
) -> tuple[Rankings, dict[str, Any]]:
    """Dense retrieval against a built index; warns when judged docids are absent from the index."""
    retriever = Retriever.open(index_path, encoder_path)
    try:
        known = set(retriever.index.docids)
        judged = {d for docs in dataset.qrels.values() for d in docs}
        missing = len(judged - known)
        if missing:
            logger.warning("%d of %d judged docids are not in the index %s", missing, len(judged), retriever.index.directory)
        run = retriever.search_run(dataset.queries, depth)
        manifest = retriever.index.manifest
        return {q: list(docs.items()) for q, docs in run.items()}, {
            "index": str(retriever.index.directory),
            "factory": manifest.factory,
            "encoder": manifest.encoder.model_dump(),
            "encoder_config": retriever.encoder.config.model_dump(),
            "corpus_size": manifest.count,
        }
    finally:
        retriever.close()


def hybrid_rankings(dense: Rankings, bm25: Rankings, config: FusionConfig, depth: int) -> Rankings:
    """Fuse per query with :func:`retrieval.fusion.fuse`."""
    return {
        q: [(h.docid, h.score) for h in fuse(dense.get(q, []), bm25.get(q, []), config, depth)]
        for q in dense.keys() | bm25.keys()
    }


def to_run(rankings: Rankings) -> Run:
    return {q: dict(hits) for q, hits in rankings.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=data_dir() / "scifact", help="BEIR or TSV dataset directory")
    parser.add_argument("--split", default="test", help="qrels split (BEIR: qrels/<split>.tsv)")
    parser.add_argument(
        "--retriever", action="append", choices=["bm25", "dense", "hybrid"], help="repeatable (default: bm25)"
    )
    parser.add_argument("--index", type=Path, help="index root or directory (for dense and hybrid)")
    parser.add_argument("--encoder-path", help="load the index's encoder from here (fingerprint still checked)")
    parser.add_argument("--depth", type=int, default=1000, help="hits retrieved per query (default: %(default)s)")
    parser.add_argument("--relevance-level", type=int, default=1, help="minimum grade counted relevant by R@k and MRR")
    parser.add_argument("--bm25-stemmer", default=None, help="e.g. 'english' (default: none)")
    fusion = parser.add_argument_group("hybrid fusion (see retrieval.fusion; defaults: FusionConfig)")
    fusion.add_argument("--fusion-method", choices=["zscore", "rrf"])
    fusion.add_argument("--dense-weight", type=float)
    fusion.add_argument("--bm25-weight", type=float)
    fusion.add_argument("--dense-depth", type=int)
    fusion.add_argument("--bm25-depth", type=int)
    parser.add_argument("--output", type=Path, help="write metrics JSON here")
    parser.add_argument("--run-dir", type=Path, help="write one TREC run file per system here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.retriever = args.retriever or ["bm25"]
    if {"dense", "hybrid"} & set(args.retriever) and args.index is None:
        parser.error("--retriever dense/hybrid needs --index")
    if args.depth < 1:
        parser.error("--depth must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)
    configure_logging(args.verbose)

    def body() -> int:
        threads = configure_threads(args.threads)
        dataset = load_dataset(args.dataset, args.split)
        if not dataset.queries:
            raise RetrievalError(f"{args.dataset}: split {args.split!r} has no judged queries")
        fusion = FusionConfig().override(
            method=args.fusion_method,
            dense_weight=args.dense_weight,
            bm25_weight=args.bm25_weight,
            dense_depth=args.dense_depth,
            bm25_depth=args.bm25_depth,
        )
        wanted = set(args.retriever)
        base_depth = max(args.depth, fusion.dense_depth, fusion.bm25_depth) if "hybrid" in wanted else args.depth
        rankings: dict[str, tuple[Rankings, dict[str, Any], float]] = {}
        for name in ("bm25", "dense"):
            if name in wanted or "hybrid" in wanted:
                started = time.monotonic()
                if name == "bm25":
                    ranked, config = bm25_rankings(dataset, base_depth, BM25Config(stemmer=args.bm25_stemmer))
                else:
                    ranked, config = dense_rankings(dataset, base_depth, args.index, args.encoder_path)
                rankings[name] = (ranked, config, time.monotonic() - started)
        if "hybrid" in wanted:
            started = time.monotonic()
            ranked = hybrid_rankings(rankings["dense"][0], rankings["bm25"][0], fusion, args.depth)
            elapsed = time.monotonic() - started + rankings["dense"][2] + rankings["bm25"][2]
            config = {"fusion": fusion.to_dict(), "dense": rankings["dense"][1], "bm25": rankings["bm25"][1]["bm25"]}
            rankings["hybrid"] = (ranked, config, elapsed)
        systems: dict[str, dict[str, Any]] = {}
        for name in args.retriever:
            ranked, config, elapsed = rankings[name]
            run = to_run({q: hits[: args.depth] for q, hits in ranked.items()})
            metrics = evaluate_run(dataset.qrels, run, relevance_level=args.relevance_level)
            systems[name] = {"metrics": metrics, "config": config, "seconds": round(elapsed, 2)}
            if args.run_dir:
                args.run_dir.mkdir(parents=True, exist_ok=True)
                write_trec_run(args.run_dir / f"{name}.trec", run, tag=name)
        print(f"{args.dataset.name} / {args.split}: {len(dataset.queries)} queries, depth {args.depth}")
        print(format_table({name: s["metrics"] for name, s in systems.items()}))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "command": shlex.join(["md2pr-evaluate", *(sys.argv[1:] if argv is None else argv)]),
                "machine": {"cpus": os.cpu_count(), "threads": threads},
                "dataset": str(args.dataset),
                "split": args.split,
                "queries": len(dataset.queries),
                "depth": args.depth,
                "relevance_level": args.relevance_level,
                "systems": systems,
            }
            args.output.write_text(json.dumps(report, indent=2))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
