"""``md2pr-reindex``: apply a JSONL change file (upserts and deletes) to the served index version.

Example::

    md2pr-reindex --index-root artifacts/indexes/scifact --changes changes.jsonl --keep 5

Each line of the change file is ``{"op": "upsert", "docid": ..., "title": ..., "text": ...}`` or
``{"op": "delete", "docid": ...}``. The result is a new version, published when its quality
gate passes and ``CURRENT`` still names the version it was made from; the served version is
never modified. The encoder is the one the index manifest names; ``--engine ray`` encodes the
upserted passages on a Ray cluster (``--ray-address`` / ``RAY_ADDRESS``, else a local one).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from retrieval.index import read_manifest
from retrieval.index_versions import resolve_index_dir
from retrieval.runtime import configure_logging, configure_threads, run_main

from .changes import read_changes
from .cli import _positive, add_engine_arguments, add_gate_arguments, print_outcome
from .engines import make_engine
from .reindex import ReindexOptions, apply_changes, load_matching_encoder

logger = logging.getLogger("index_build")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="md2pr-reindex", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--index-root", type=Path, default=os.environ.get("MD2PR_INDEX"), required="MD2PR_INDEX" not in os.environ,
        help="versioned index root (default: $MD2PR_INDEX)",
    )
    parser.add_argument("--changes", type=Path, required=True, help="JSONL change file (.jsonl or .jsonl.gz)")
    parser.add_argument(
        "--encoder-path", default=None,
        help="load the manifest's encoder from this directory instead (its fingerprint must match)",
    )
    parser.add_argument("--batch-size", type=_positive, default=32)
    add_engine_arguments(parser)
    add_gate_arguments(parser, progress=False)
    args = parser.parse_args(argv)
    if args.ray_address and args.engine != "ray":
        parser.error("--ray-address needs --engine ray")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)
    configure_logging(args.verbose)

    def body() -> int:
        changes = read_changes(args.changes)  # every line is checked before anything else happens
        threads = configure_threads(args.threads)
        options = ReindexOptions(
            batch_size=args.batch_size, min_recall=args.min_recall, gate_queries=args.gate_queries,
            keep=args.keep, publish=not args.no_publish,
        )
        encoder = engine = None
        if args.engine != "local":
            encoder = load_matching_encoder(read_manifest(resolve_index_dir(args.index_root)), args.encoder_path)
            engine = make_engine(args.engine, encoder, args.batch_size, args.ray_address, threads)
        result = apply_changes(
            args.index_root, changes, encoder=encoder, encoder_path=args.encoder_path, options=options,
            change_label=str(args.changes), engine=engine,
        )
        build = result.manifest.build
        summary = (
            f"{result.manifest.count} passages: +{build['upserts']} upserted ({build['replaced']} replaced), "
            f"-{build['deleted']} deleted, {build['missing_deletes']} unknown deletes ignored"
        )
        print_outcome(result, f"from {result.manifest.parent} ({summary})")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
