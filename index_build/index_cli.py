"""``md2pr-index``: list, publish, roll back and prune the versions of an index root.

Examples::

    md2pr-index list --index-root artifacts/indexes/scifact
    md2pr-index rollback --index-root artifacts/indexes/scifact            # to the previous version
    md2pr-index rollback --index-root artifacts/indexes/scifact --to 20261128T044506-b098a7
    md2pr-index publish --index-root artifacts/indexes/scifact 20261129T101500123-1a2b3c
    md2pr-index prune --index-root artifacts/indexes/scifact --keep 3 --staging
    md2pr-index pair --index-root artifacts/indexes/scifact --query-encoder artifacts/students/query-tower/model

``publish NAME`` publishes a finished build left in ``staging/`` (``--no-publish``), or
re-points ``CURRENT`` at an existing version. ``prune`` never removes the served version.
``pair`` publishes a version that answers queries with a query-tower student (``md2pr-distill
--train-tower query``) over the served version's unchanged passage vectors: every data file is
hard-linked, only the manifest's ``query_encoder`` changes, and the student's ``pairing.json``
must name the passage encoder of those vectors. A running service picks it up by a reload (hot
swap); ``rollback`` goes back to the previous query encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from retrieval.errors import ArtifactError, ArtifactMismatchError
from retrieval.index import BUILD_DIR, MANIFEST_FILE, read_manifest
from retrieval.index_versions import (
    STAGING_DIR,
    VERSIONS_DIR,
    current_version,
    list_versions,
    prune,
    publish,
    publish_derived,
    resolve_index_dir,
    remove_staging,
    rollback,
    set_current,
    staging_in_use,
)
from retrieval.runtime import configure_logging, run_main

from .shards import STATE_FILE, BuildState

logger = logging.getLogger("index_build")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="md2pr-index", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--index-root", type=Path, default=os.environ.get("MD2PR_INDEX"),
        help="versioned index root (default: $MD2PR_INDEX)",
    )
    common.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="versions with count, family, recall, encoder and date")
    listing.add_argument("--json", action="store_true", help="one JSON object per version")
    back = commands.add_parser("rollback", parents=[common], help="point CURRENT at the previous (or a named) version")
    back.add_argument("--to", dest="version", help="version to serve (default: the one before CURRENT)")
    pub = commands.add_parser("publish", parents=[common], help="publish a finished staged build, or serve an existing version")
    pub.add_argument("name", help="a staging directory name (or path), or a version name")
    pub.add_argument("--keep", type=int, default=None, help="then keep only the newest N versions")
    pair = commands.add_parser(
        "pair", parents=[common], help="serve a query-tower student over the current version's passage vectors"
    )
    pair.add_argument("--query-encoder", required=True, help="the student's model directory (with pairing.json)")
    cut = commands.add_parser("prune", parents=[common], help="delete all but the newest N versions (never CURRENT)")
    cut.add_argument("--keep", type=int, required=True)
    cut.add_argument("--staging", action="store_true", help="also delete builds left in staging/, unfinished or unpublished (never a running one)")
    args = parser.parse_args(argv)
    if args.index_root is None:
        parser.error("--index-root is required (or set MD2PR_INDEX)")
    return args


def _row(info) -> dict:
    m = info.manifest
    if m is None:
        return {"version": info.name, "current": info.current, "error": info.error}
    quality = m.quality or {}
    return {
        "version": info.name,
        "current": info.current,
        "count": m.count,
        "factory": m.factory,
        "family": m.family,
        "search_params": m.search_params,
        "recall_at_10": quality.get("recall_at_k"),
        "encoder": m.encoder.source,
        "encoder_fingerprint": m.encoder.fingerprint[:12],
        "query_encoder": m.query_encoder.source if m.query_encoder else None,
        "created_at": m.created_at,
        "parent": m.parent,
    }


def _print_table(rows: list[dict]) -> None:
    headers = ["", "version", "count", "factory", "params", "recall@10", "encoder", "created"]
    table = []
    for r in rows:
        if "error" in r:
            table.append(["*" if r["current"] else "", r["version"], "", "", "", "", "", f"unreadable: {r['error']}"])
            continue
        recall = "" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
        params = ",".join(f"{k}={v}" for k, v in r["search_params"].items())
        table.append(
            ["*" if r["current"] else "", r["version"], str(r["count"]), r["factory"], params, recall,
             f"{r['encoder']} ({r['encoder_fingerprint']})" + (f", queries: {r['query_encoder']}" if r["query_encoder"] else ""),
             r["created_at"]]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table)]
    for line in [headers, *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())


def _staging_dirs(root: Path) -> list[Path]:
    staging = root / STAGING_DIR
    return sorted(p for p in staging.iterdir() if p.is_dir()) if staging.is_dir() else []


def _publish(root: Path, name: str, keep: int | None) -> str:
    candidate = Path(name)
    staged = candidate if candidate.is_dir() and candidate.parent.resolve() == (root / STAGING_DIR).resolve() else root / STAGING_DIR / name
    if staged.is_dir():
        if (staged / BUILD_DIR).exists():
            raise ArtifactError(f"{staged}: the build has not finished (run the same build command again to resume it)")
        version = publish(root, staged, keep=keep)
        print(f"published {version}")
        return version
    if (root / VERSIONS_DIR / name).is_dir():
        set_current(root, name)
        print(f"CURRENT -> {name}")
        return name
    raise ArtifactError(f"{root}: {name!r} is neither a staged build nor a version (see md2pr-index list)")


def pair_query_encoder(root: Path, query_encoder: str) -> str:
    """Publish the current version again with ``query_encoder`` answering its queries; returns the version.

    Refused (:class:`ArtifactMismatchError`) unless the student's ``pairing.json`` names the
    passage encoder of the current version's vectors.
    """
    from retrieval.encoder import DualEncoder
    from retrieval.index import EncoderRef
    from retrieval.pairing import check_pairing

    source = resolve_index_dir(root)
    manifest = read_manifest(source)
    student = DualEncoder.from_pretrained(query_encoder)
    check_pairing(student.model_dir, student.fingerprint, manifest.encoder.fingerprint, f"index version {source.name}")
    if student.dimension != manifest.dimension:
        raise ArtifactMismatchError(f"{query_encoder}: {student.dimension}-d vectors, the index holds {manifest.dimension}-d")
    ref = EncoderRef(source=str(query_encoder), fingerprint=student.fingerprint)
    provenance = {"query_encoder_pairing": {"query_encoder": str(query_encoder), "passage_encoder": manifest.encoder.source}}
    return publish_derived(root, source, {"query_encoder": ref}, "paired", provenance)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)
    configure_logging(args.verbose)
    root: Path = args.index_root

    def body() -> int:
        if not root.is_dir():
            raise ArtifactError(f"{root}: no such index root")
        if args.command == "list":
            rows = [_row(info) for info in list_versions(root)]
            if args.json:
                for r in rows:
                    print(json.dumps(r))
            elif rows:
                _print_table(rows)
            else:
                print(f"{root}: no versions")
            for staged in _staging_dirs(root):
                state = staged / BUILD_DIR / STATE_FILE
                if state.is_file():
                    try:
                        done = BuildState.model_validate_json(state.read_text()).rows_done
                        status = f"unfinished build, {done} passages encoded"
                    except ValueError:
                        status = "unfinished build"
                elif (staged / MANIFEST_FILE).is_file():
                    status = "finished, not published"
                else:
                    status = "incomplete"
                if not args.json:
                    print(f"staging/{staged.name}: {status}")
            return 0
        if args.command == "rollback":
            before = current_version(root)
            version = rollback(root, args.version)
            print(f"CURRENT -> {version} (was {before})")
            return 0
        if args.command == "publish":
            _publish(root, args.name, args.keep)
            return 0
        if args.command == "pair":
            version = pair_query_encoder(root, args.query_encoder)
            print(f"published {version}: queries encoded by {args.query_encoder}")
            return 0
        if args.command == "prune":
            removed = prune(root, args.keep)
            if args.staging:
                removed_staging = []
                for staged in _staging_dirs(root):
                    if staging_in_use(staged):
                        continue
                    remove_staging(root, staged.name)
                    removed_staging.append(staged.name)
                if removed_staging:
                    print(f"removed staging: {', '.join(removed_staging)}")
            print(f"removed {len(removed)} version(s)" + (f": {', '.join(removed)}" if removed else ""))
            return 0
        raise AssertionError(args.command)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
