"""``md2pr-fit-fusion``: fit the hybrid fusion weights of the served version on judged dev queries
and publish them as a new version whose manifest records them.

Example::

    md2pr-fit-fusion --index-root artifacts/indexes/scifact --dataset ../shared/data/scifact --split train:dev

Versions are never modified in place: the new version hard-links every data file of the
current one (no copy, no re-encoding) and differs only in ``manifest.json`` (``fusion`` and
``build.fusion_fit``). Test splits are refused: weights tuned on test would inflate every
figure measured with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from retrieval.datasets import load_dataset
from retrieval.errors import InvalidValueError
from retrieval.fusion import FitResult, FusionConfig, fit_weights
from retrieval.index_versions import current_version, publish_derived
from retrieval.metrics import unseen_positive_queries
from retrieval.paths import data_dir
from retrieval.retriever import Retriever
from retrieval.runtime import run_job

logger = logging.getLogger("index_build.fit_fusion")


def fit_on_dataset(
    retriever: Retriever,
    dataset_root: Path,
    split: str,
    steps: int,
    base: FusionConfig,
    unseen_from: str | None = None,
) -> FitResult:
    """Rank the split's queries with both sides of ``retriever`` and grid-search the weights.

    With ``unseen_from`` (the split the query encoder was trained on, e.g. ``train:fit``) the
    choice averages the objective on the whole split and on its queries none of whose positives
    is a positive of ``unseen_from`` (:func:`retrieval.fusion.fit_weights`).
    """
    for name in (split, unseen_from):
        if name is not None and name.partition(":")[0] == "test":
            raise InvalidValueError(f"refusing to fit fusion weights on {name!r}: use a dev split such as train:dev")
    dataset = load_dataset(dataset_root, split)
    if not dataset.queries:
        raise InvalidValueError(f"{dataset_root}: split {split!r} has no judged queries")
    unseen = None
    if unseen_from is not None:
        unseen = unseen_positive_queries(dataset.qrels, load_dataset(dataset_root, unseen_from).qrels)
        if not unseen:
            raise InvalidValueError(f"--unseen-from {unseen_from}: no query of {split} has only unseen positives")
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    dense = retriever.search(texts, base.dense_depth, mode="dense")
    lexical = retriever.search(texts, base.bm25_depth, mode="bm25")
    return fit_weights(
        dataset.qrels,
        {q: [(h.docid, h.score) for h in hits] for q, hits in zip(qids, dense)},
        {q: [(h.docid, h.score) for h in hits] for q, hits in zip(qids, lexical)},
        base,
        steps,
        unseen=unseen,
    )


def publish_with_fusion(index_root: Path, source: Path, config: FusionConfig, provenance: dict) -> str:
    """A new version = ``source``'s files (hard links) + a manifest with ``config`` as fusion defaults."""
    return publish_derived(index_root, source, {"fusion": config.to_dict()}, "fusion", {"fusion_fit": provenance})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-fit-fusion", description=__doc__.splitlines()[0])
    parser.add_argument("--index-root", type=Path, required=True, help="versioned index root (its CURRENT version is used)")
    parser.add_argument("--dataset", type=Path, default=data_dir() / "scifact", help="dataset with judged queries")
    parser.add_argument("--split", default="train:dev", help="judged split to fit on (default: %(default)s; never test)")
    parser.add_argument(
        "--unseen-from", default=None,
        help="split the query encoder was trained on (e.g. train:fit): choose the weights on the mean of the "
             "objective over all of --split and over its queries none of whose positives is a positive there",
    )
    parser.add_argument("--steps", type=int, default=20, help="grid points - 1 over the dense/BM25 balance")
    parser.add_argument("--method", choices=["zscore", "rrf"], default="zscore")
    parser.add_argument("--dense-depth", type=int, default=100)
    parser.add_argument("--bm25-depth", type=int, default=100)
    parser.add_argument("--no-publish", action="store_true", help="report the fit without publishing a version")
    parser.add_argument("--output", type=Path, help="write the grid and the chosen weights as JSON")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= 1000:
        parser.error("--steps must be within 1..1000")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(_threads: int) -> int:
        base = FusionConfig(method=args.method, dense_depth=args.dense_depth, bm25_depth=args.bm25_depth)
        retriever = Retriever.open(args.index_root)
        try:
            if "hybrid" not in retriever.modes:
                raise InvalidValueError(f"{retriever.index.directory} has no BM25 side index: rebuild without --no-bm25")
            fit = fit_on_dataset(retriever, args.dataset, args.split, args.steps, base, args.unseen_from)
            source = retriever.index.directory
            manifest = retriever.index.manifest
            # what the weights balance: the query encoder the version serves and its BM25 tokenisation
            fitted_for = {"model": (manifest.query_encoder or manifest.encoder).source,
                          "bm25": retriever.bm25.config.to_dict() if retriever.bm25 else None}
        finally:
            retriever.close()
        best = fit.best_objective
        report = {
            "kind": "fusion_fit",
            "command": shlex.join(["md2pr-fit-fusion", *(sys.argv[1:] if argv is None else argv)]),
            "dataset": str(args.dataset),
            "split": args.split,
            "unseen_from": args.unseen_from,
            "objective": fit.objective,
            "chosen": fit.best.to_dict(),
            "chosen_objective": best,
            "grid": fit.grid,
            "index_version": source.name,
            **fitted_for,
        }
        print(f"fitted on {args.dataset.name} / {args.split}: dense_weight={fit.best.dense_weight} "
              f"bm25_weight={fit.best.bm25_weight} ({fit.objective} {best:.4f})")
        if not args.no_publish:
            provenance = {k: report[k] for k in ("command", "dataset", "split", "unseen_from", "objective", "chosen_objective")}
            version = publish_with_fusion(args.index_root, source, fit.best, provenance)
            report["published"] = version
            print(f"published {version} (fusion defaults recorded in its manifest; CURRENT -> {current_version(args.index_root)})")
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2))
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
