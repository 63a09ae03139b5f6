"""``md2pr-build-index``: encode a corpus and publish it as a new index version.

Example::

    md2pr-build-index --corpus ../shared/data/scifact --index-root artifacts/indexes/scifact
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from retrieval.datasets import iter_corpus
from retrieval.encoder import DualEncoder
from retrieval.index_versions import current_version
from retrieval.paths import BUILTIN_MODEL, artifacts_dir, data_dir
from retrieval.runtime import configure_logging, configure_threads, run_main

from .build import build_index

logger = logging.getLogger("index_build")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-build-index", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=data_dir() / "scifact",
        help="BEIR directory (corpus.jsonl), TSV directory (corpus.tsv), or a .jsonl/.tsv corpus file "
        "(default: %(default)s)",
    )
    parser.add_argument("--index-root", type=Path, help="versioned index root (default: artifacts/indexes/<corpus name>)")
    parser.add_argument("--encoder", default=BUILTIN_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument("--factory", default="Flat", help="FAISS index_factory string (default: exact %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=256, help="passages read and encoded per step")
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: all cores)")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the root already has a published version")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.chunk_size < 1:
        parser.error("--batch-size and --chunk-size must be positive")
    return args


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
        configure_threads(args.threads)
        encoder = DualEncoder.from_pretrained(args.encoder)
        result = build_index(
            iter_corpus(corpus),
            index_root,
            encoder,
            factory=args.factory,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            corpus_label=str(corpus),
            show_progress=not args.no_progress,
        )
        print(f"published {result.version} ({result.manifest.count} passages) -> {result.directory}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
