"""``md2pr-build-index``: encode a corpus and publish it as a new index version.

Examples::

    md2pr-build-index --corpus ../shared/data/scifact --index-root artifacts/indexes/scifact
    md2pr-build-index --corpus corpus.jsonl --index-root idx --factory IVF1024,PQ32 --min-recall 0.6
    md2pr-build-index --corpus corpus.jsonl --index-root idx --encoder models/distilled   # new encoder: new version
    md2pr-build-index --corpus ../shared/data/scifact --backend onnx   # after md2pr-export --parity-dataset ...
    md2pr-build-index --corpus ../shared/data/scifact --engine ray --ray-address auto   # encode on a Ray cluster
    md2pr-build-index --corpus ../shared/data/scifact --index-backend milvus --milvus-uri http://milvus:19530

A killed build resumes when the same command is run again (finished shards are reused).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
from pathlib import Path

from retrieval.backends import BACKENDS
from retrieval.bm25 import BM25Config, stemmer_option
from retrieval.datasets import iter_corpus, read_beir_queries, read_tsv_queries
from retrieval.encoder import DualEncoder
from retrieval.errors import DatasetFormatError
from retrieval.index_versions import current_version
from retrieval.paths import BUILTIN_MODEL, artifacts_dir, data_dir
from retrieval.runtime import configure_logging, configure_threads, run_main

from .build import build_index
from .options import (
    DEFAULT_GATE_QUERIES,
    DEFAULT_MIN_RECALL,
    DEFAULT_SHARD_SIZE,
    DEFAULT_TARGET_RECALL,
    BuildOptions,
    BuildResult,
    check_family,
)
from .engines import ENGINES, make_engine

logger = logging.getLogger("index_build")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_gate_arguments(parser: argparse.ArgumentParser, progress: bool = True) -> None:
    """Quality-gate, publishing and run options shared by ``md2pr-build-index`` and ``md2pr-reindex``.

    Adds ``--min-recall``, ``--gate-queries``, ``--keep``, ``--no-publish``, ``--threads``,
    ``--no-progress`` (only with ``progress``: re-indexing shows no progress bar) and ``-v``.
    """
    parser.add_argument(
        "--min-recall", type=_fraction, default=DEFAULT_MIN_RECALL,
        help="fail (publish nothing) when recall@10 against exact search is below this (default: %(default)s)",
    )
    parser.add_argument(
        "--gate-queries", type=int, default=DEFAULT_GATE_QUERIES,
        help="queries the quality gate searches with: 12-word snippets of sampled passages, encoded as queries "
        "(default: %(default)s)",
    )
    parser.add_argument("--keep", type=_positive, default=None, help="after publishing, keep only the newest N versions")
    parser.add_argument("--no-publish", action="store_true", help="leave the finished build in staging/ (publish it with md2pr-index publish)")
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: all cores)")
    if progress:
        parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine local|ray`` and ``--ray-address`` (shared by ``md2pr-build-index`` and ``md2pr-reindex``)."""
    group = parser.add_argument_group("execution engine (index_build.engines)")
    group.add_argument(
        "--engine", choices=ENGINES, default="local",
        help="where passages are encoded: local (this process, default) or ray (a Ray Data map_batches stage over "
        "an actor pool; same shard files and vectors, so resume, gate and publishing are unchanged)",
    )
    group.add_argument(
        "--ray-address", default=os.environ.get("RAY_ADDRESS") or None,
        help="Ray cluster to run on, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS; with neither, a local "
        "cluster of --threads CPUs is started)",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="md2pr-build-index", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=data_dir() / "scifact",
        help="BEIR directory (corpus.jsonl), TSV directory (corpus.tsv), or a .jsonl/.tsv corpus file "
        "(default: %(default)s)",
    )
    parser.add_argument("--index-root", type=Path, help="versioned index root (default: artifacts/indexes/<corpus name>)")
    parser.add_argument("--encoder", default=BUILTIN_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="torch",
        help="what runs the encoder: torch, onnx (ONNX Runtime fp32) or onnx-int8; an ONNX backend needs "
        "md2pr-export's export with a passing parity record (default: %(default)s)",
    )
    parser.add_argument(
        "--factory", default="Flat",
        help="FAISS index_factory string: Flat (exact, default), HNSW32, HNSW32,SQ8, IVF1024,Flat, IVF1024,PQ32, "
        "OPQ32,IVF1024,PQ32, ...",
    )
    parser.add_argument("--nprobe", type=_positive, help="IVF default nprobe (default: tuned to --target-recall)")
    parser.add_argument("--ef-search", type=_positive, help="HNSW default efSearch (default: tuned to --target-recall)")
    parser.add_argument("--ef-construction", type=_positive, help="HNSW efConstruction (default: 80)")
    parser.add_argument(
        "--target-recall", type=_fraction, default=DEFAULT_TARGET_RECALL,
        help="recall@10 the tuned nprobe/efSearch default must reach (default: %(default)s)",
    )
    parser.add_argument("--train-size", type=_positive, help="training sample size for IVF/PQ/SQ (default: 50 per IVF cell, >= 20k)")
    parser.add_argument(
        "--gate-query-file", type=Path,
        help="real queries (BEIR queries.jsonl or id<TAB>text .tsv) for the quality gate instead of passage snippets",
    )
    milvus = parser.add_argument_group("index backend (retrieval.index / retrieval.milvus_index)")
    milvus.add_argument(
        "--index-backend", choices=("faiss", "milvus"), default="faiss",
        help="where the vectors are searched: faiss (index.faiss in the version directory, default) or milvus (one "
        "collection per version, alias <prefix>_current follows CURRENT); families on milvus: Flat, HNSW<M>, IVF<n>,Flat",
    )
    milvus.add_argument(
        "--milvus-uri", default=os.environ.get("MD2PR_MILVUS_URI") or None,
        help="Milvus server (http://host:19530) or a milvus-lite .db path (default: $MD2PR_MILVUS_URI)",
    )
    milvus.add_argument("--milvus-prefix", default=None, help="collection/alias name prefix (default: md2pr_<index root name>)")
    parser.add_argument("--mmap", action="store_true", help="serve the index memory-mapped (for indexes larger than memory)")
    vectors = parser.add_mutually_exclusive_group()
    vectors.add_argument("--store-vectors", dest="store_vectors", action="store_true", default=None,
                         help="keep vectors.f32 (default: unless the index itself is exact)")
    vectors.add_argument("--no-store-vectors", dest="store_vectors", action="store_false")
    parser.add_argument("--batch-size", type=int, default=32)
    lexical = parser.add_argument_group("BM25 side index (search modes bm25 and hybrid)")
    lexical.add_argument("--no-bm25", action="store_true", help="build no BM25 side index (dense search only)")
    lexical.add_argument("--bm25-stemmer", type=stemmer_option, default=BM25Config.stemmer,
                        help="PyStemmer algorithm, or 'none' for no stemming (default: %(default)s)")
    parser.add_argument(
        "--shard-size", "--chunk-size", dest="shard_size", type=int, default=DEFAULT_SHARD_SIZE,
        help="passages per resumable shard (default: %(default)s)",
    )
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the root already has a published version")
    add_engine_arguments(parser)
    add_gate_arguments(parser)
    args = parser.parse_args(argv)
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address needs --engine ray")
    if args.index_backend == "milvus" and not args.milvus_uri:
        parser.error("--index-backend milvus needs --milvus-uri (or MD2PR_MILVUS_URI)")
    if args.batch_size < 1 or args.shard_size < 1:
        parser.error("--batch-size and --shard-size must be positive")
    return args


def print_outcome(result: BuildResult, summary: str) -> None:
    """One line on stdout: ``published VERSION SUMMARY -> DIR``, or ``built VERSION SUMMARY, not published: DIR``
    (``--no-publish``, or a re-index whose base version is no longer current)."""
    if result.published:
        print(f"published {result.version} {summary} -> {result.directory}")
    else:
        print(f"built {result.version} {summary}, not published: {result.directory}")


def estimate_count(corpus: Path) -> int | None:
    """Non-blank lines of the corpus file (a cheap passage count for the progress bar's ETA)."""
    path = corpus
    if corpus.is_dir():
        path = next((corpus / n for n in ("corpus.jsonl", "corpus.tsv") if (corpus / n).is_file()), corpus)
    if not path.is_file():
        return None
    opener = gzip.open if path.name.endswith(".gz") else open
    count = 0
    with opener(path, "rb") as handle:
        for line in handle:
            count += bool(line.strip())
    return count


def read_queries(path: Path) -> list[str]:
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return list(read_beir_queries(path).values())
    if name.endswith(".tsv"):
        return list(read_tsv_queries(path).values())
    raise DatasetFormatError(f"{path}: gate queries must be a .jsonl (BEIR) or .tsv file")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)
    configure_logging(args.verbose)

    def body() -> int:
        corpus: Path = args.corpus
        index_root: Path = args.index_root or artifacts_dir() / "indexes" / corpus.stem
        existing = current_version(index_root)
        if args.if_missing and existing:
            logger.info("index root %s already serves version %s; nothing to do", index_root, existing)
            return 0
        passages = iter_corpus(corpus)  # checks the path now
        search_params = {}
        if args.nprobe is not None:
            search_params["nprobe"] = args.nprobe
        if args.ef_search is not None:
            search_params["efSearch"] = args.ef_search
        options = BuildOptions(
            factory=args.factory,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            search_params=search_params,
            ef_construction=args.ef_construction,
            train_size=args.train_size,
            min_recall=args.min_recall,
            target_recall=args.target_recall,
            gate_queries=args.gate_queries,
            store_vectors=args.store_vectors,
            mmap=args.mmap,
            keep=args.keep,
            publish=not args.no_publish,
            lexical=None if args.no_bm25 else BM25Config(stemmer=args.bm25_stemmer),
            index_backend=args.index_backend,
            milvus_uri=args.milvus_uri,
            milvus_prefix=args.milvus_prefix,
        )
        threads = configure_threads(args.threads)
        encoder = DualEncoder.from_pretrained(args.encoder, backend=args.backend, threads=threads)
        check_family(encoder.dimension, options)  # a bad factory string fails before any encoding
        if args.gate_query_file is not None:
            queries = read_queries(args.gate_query_file)[: args.gate_queries]
            options = BuildOptions(**{**options.__dict__, "query_vectors": encoder.encode_queries(queries)})
        engine = make_engine(args.engine, encoder, options.batch_size, args.ray_address, threads)
        result = build_index(
            passages,
            index_root,
            encoder,
            corpus_label=str(corpus),
            show_progress=not args.no_progress,
            options=options,
            total_hint=estimate_count(corpus),
            engine=engine,
        )
        quality = result.manifest.quality or {}
        recall = f", recall@10 {quality['recall_at_k']:.3f}" if "recall_at_k" in quality else ""
        params = "".join(f", {k}={v}" for k, v in result.manifest.search_params.items())
        milvus = result.manifest.milvus
        where = f", milvus collection {milvus.collection}" if milvus else ""
        print_outcome(result, f"({result.manifest.count} passages, {result.manifest.factory}{params}{recall}{where})")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
