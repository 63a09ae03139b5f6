"""``md2pr-evaluate``: BM25, a dense index and/or a running service on a dataset split -> metrics table and JSON.

Example::

    md2pr-evaluate --dataset ../shared/data/scifact --split test \\
        --retriever bm25 --retriever dense --index artifacts/indexes/scifact --output scifact.json

Service mode (``--retriever service --service-url URL``): the split's queries are sent to a
running md2pr service (``POST /search``, ``--service-mode`` dense, bm25 or hybrid) and its
answers are scored like in-process retrieval (:mod:`evaluation.service_client`). The system is
named ``service`` (``service-<mode>`` for bm25 and hybrid). The service answers at most 100
hits per query: a larger ``--depth`` is clamped (with a warning). For every system, the
measures whose cut-off is above the depth it retrieved (R@1000 at ``--depth 100``, or from a
service) are left out rather than computed on a shorter list, and listed in its
``"omitted_metrics"``; so the service's metrics are comparable with ``dense``'s at any depth.
The run fails if the served index version or model changes while the queries are asked.

Rerank mode (``--rerank MODEL``): each first stage named by ``--rerank-first-stage`` (``bm25``,
``dense``, ``hybrid`` or ``run``, the TREC run file given by ``--first-stage-run``) gives its top
``--rerank-depth`` (default 100), reranked by the cross-encoder (system ``rerank-<stage>``) and,
when the model's config holds fitted fusion weights, by the fused teacher score
(:mod:`evaluation.rerank`, system ``fused-rerank-<stage>``; needs
``--index``, built by the fusion's dense encoder). Cross-encoder scores are computed once per
(query, passage) and shared by all stages; ``--score-cache FILE`` keeps them across runs.

The JSON written by ``--output`` (modelled by :class:`evaluation.results.EvaluationReport`, which
validates it before it is written) is ``{"command", "machine", "dataset", "split", "queries", "depth",
"relevance_level", "systems": {name: {"metrics": {measure: value}, "config": {...}, "seconds": s}}}``;
rerank systems also have ``"kind": "rerank"`` and ``"rerank": {"first_stage", "depth", "score",
"pairs", "scoring_seconds", "seconds_per_pair", "cross_encoder": {...}}`` (``pairs``: newly scored,
not found in the score cache or scored for an earlier stage) and their ``config`` is
the first stage's. The service system's ``config`` is ``{"service_url", "mode", "index_version",
"model": {"fingerprint", "source"}, "family", "count", "depth" (used), "requested_depth",
"batch_size", "retries"}`` (from ``GET /info``; ``retries``: 429 answers waited out). A system
that could not be scored at every default measure has ``"omitted_metrics": [measure, ...]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from retrieval.bm25 import BM25Config, stemmer_option
from retrieval.cross_encoder import CrossEncoder
from retrieval.datasets import load_dataset
from retrieval.errors import RetrievalError
from retrieval.fusion import FusionConfig
from retrieval.jsonio import write_json_atomic
from retrieval.metrics import evaluate_run, format_table, read_trec_run, subset, unseen_positive_queries, write_trec_run
from retrieval.paths import data_dir
from retrieval.runtime import run_job

from . import service_client
from .rankings import (
    Rankings,
    bm25_rankings,
    dense_rankings,
    hybrid_rankings,
    measures_within,
    run_rankings,
    to_run,
)
from .rerank import RerankOptions, rerank_systems
from .results import EvaluationReport

__all__ = ["dense_rankings", "main", "service_system_name", "to_run"]

logger = logging.getLogger("evaluate")


def service_system_name(mode: str) -> str:
    """``service`` for the dense mode, ``service-<mode>`` for the others."""
    return "service" if mode == "dense" else f"service-{mode}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=data_dir() / "scifact", help="BEIR or TSV dataset directory")
    parser.add_argument("--split", default="test", help="qrels split (BEIR: qrels/<split>.tsv)")
    parser.add_argument(
        "--retriever", action="append", choices=["bm25", "dense", "hybrid", "service"],
        help="repeatable (default: bm25); service: a running md2pr service (--service-url)",
    )
    parser.add_argument("--index", type=Path, help="index root or directory (for dense and hybrid)")
    parser.add_argument("--encoder-path", help="load the index's encoder from here (fingerprint still checked)")
    parser.add_argument("--query-encoder", help="a query-tower student (md2pr-distill --train-tower query) whose queries "
                        "search --index, built by the passage encoder its pairing.json names")
    parser.add_argument("--unseen-from", metavar="SPLIT",
                        help="also measure every system on the queries none of whose positives is a positive of this "
                             "qrels split (e.g. train: the unseen-positive subset, written as metrics_unseen)")
    parser.add_argument("--depth", type=int, default=1000, help="hits retrieved per query (default: %(default)s)")
    parser.add_argument("--relevance-level", type=int, default=1, help="minimum grade counted relevant by R@k and MRR")
    parser.add_argument("--bm25-stemmer", type=stemmer_option, default=BM25Config.stemmer,
                        help="PyStemmer algorithm, or 'none' for no stemming (default: %(default)s)")
    fusion = parser.add_argument_group("hybrid fusion (see retrieval.fusion; defaults: FusionConfig)")
    fusion.add_argument("--fusion-method", choices=["zscore", "rrf"])
    fusion.add_argument("--dense-weight", type=float)
    fusion.add_argument("--bm25-weight", type=float)
    fusion.add_argument("--dense-depth", type=int)
    fusion.add_argument("--bm25-depth", type=int)
    service = parser.add_argument_group(
        "service mode (a running md2pr service over HTTP; at most 100 hits per query: a larger --depth is clamped "
        "and deeper measures are left out)"
    )
    service.add_argument("--service-url", help="base URL of the service, e.g. http://127.0.0.1:8000 (needed by --retriever service)")
    service.add_argument("--service-mode", choices=list(service_client.SERVICE_MODES), default="dense",
                         help="search mode asked of the service (default: %(default)s); system service-<mode> unless dense")
    service.add_argument("--service-timeout", type=float, default=120.0,
                         help="seconds to wait for the service to be ready, and for each answer (default: %(default)s)")
    rerank = parser.add_argument_group("rerank mode (a cross-encoder over a first stage's top hits)")
    rerank.add_argument("--rerank", help="cross-encoder directory (from md2pr-train-teacher)")
    rerank.add_argument(
        "--rerank-first-stage", action="append", choices=["bm25", "dense", "hybrid", "run"],
        help="repeatable (default: bm25); 'run' is --first-stage-run",
    )
    rerank.add_argument("--rerank-depth", type=int, default=100, help="hits reranked per query (default: %(default)s)")
    rerank.add_argument("--rerank-score", choices=["cross-encoder", "fused", "both"], default="both",
                        help="both (default): the fused score too when the model has fitted fusion weights")
    rerank.add_argument("--first-stage-run", type=Path, help="TREC run file used as first stage 'run' (e.g. a DL19 BM25 pool)")
    rerank.add_argument("--score-cache", type=Path, help="JSONL file keeping cross-encoder scores across runs")
    rerank.add_argument("--rerank-batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="write metrics JSON here")
    parser.add_argument("--run-dir", type=Path, help="write one TREC run file per system here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.retriever = args.retriever or ([] if args.rerank else ["bm25"])
    args.rerank_first_stage = args.rerank_first_stage or (["bm25"] if args.rerank else [])
    if args.rerank_first_stage and not args.rerank:
        parser.error("--rerank-first-stage needs --rerank")
    if {"dense", "hybrid"} & set(args.retriever + args.rerank_first_stage) and args.index is None:
        parser.error("--retriever / --rerank-first-stage dense or hybrid needs --index")
    if "service" in args.retriever and not args.service_url:
        parser.error("--retriever service needs --service-url")
    if args.service_url and "service" not in args.retriever:
        parser.error("--service-url needs --retriever service")
    if args.service_url and not args.service_url.startswith(("http://", "https://")):
        parser.error(f"--service-url must start with http:// or https://, got {args.service_url!r}")
    if args.service_timeout <= 0:
        parser.error("--service-timeout must be positive")
    if "run" in args.rerank_first_stage and args.first_stage_run is None:
        parser.error("--rerank-first-stage run needs --first-stage-run")
    if args.depth < 1 or args.rerank_depth < 1:
        parser.error("--depth and --rerank-depth must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(threads: int) -> int:
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
        unseen = None
        if args.unseen_from:
            seen = load_dataset(args.dataset, args.unseen_from).qrels
            unseen = unseen_positive_queries(dataset.qrels, seen, args.relevance_level)
            if not unseen:
                raise RetrievalError(f"--unseen-from {args.unseen_from}: every query of {args.split} has a positive "
                                     f"that is a positive of {args.unseen_from} (the subset is empty)")
        wanted = set(args.retriever) | {s for s in args.rerank_first_stage if s != "run"}
        model = CrossEncoder.from_pretrained(args.rerank) if args.rerank else None
        use_fused = model is not None and args.rerank_score != "cross-encoder" and model.config.fusion is not None
        if model is not None and args.rerank_score == "fused" and model.config.fusion is None:
            raise RetrievalError(f"{args.rerank}: no fitted fusion weights in its config; use --rerank-score cross-encoder")
        if use_fused and args.index is None:
            raise RetrievalError("the fused teacher score needs --index (built by the fusion's dense encoder)")
        base_depth = max(args.depth, fusion.dense_depth, fusion.bm25_depth) if "hybrid" in wanted else args.depth
        base_depth = max(base_depth, args.rerank_depth) if model is not None else base_depth
        rankings: dict[str, tuple[Rankings, dict[str, Any], float]] = {}
        for name in ("bm25", "dense"):
            if name in wanted or "hybrid" in wanted:
                started = time.monotonic()
                if name == "bm25":
                    ranked, config = bm25_rankings(dataset, base_depth, BM25Config(stemmer=args.bm25_stemmer))
                else:
                    ranked, config = dense_rankings(dataset, base_depth, args.index, args.encoder_path, args.query_encoder)
                rankings[name] = (ranked, config, time.monotonic() - started)
        if "hybrid" in wanted:
            started = time.monotonic()
            ranked = hybrid_rankings(rankings["dense"][0], rankings["bm25"][0], fusion, args.depth)
            elapsed = time.monotonic() - started + rankings["dense"][2] + rankings["bm25"][2]
            config = {"fusion": fusion.to_dict(), "dense": rankings["dense"][1], "bm25": rankings["bm25"][1]["bm25"]}
            rankings["hybrid"] = (ranked, config, elapsed)
        if "service" in args.retriever:
            started = time.monotonic()
            with service_client.open_client(args.service_url, args.service_timeout) as client:
                ranked, config = service_client.service_rankings(
                    client, dataset.queries, args.depth, args.service_mode, ready_timeout_s=args.service_timeout
                )
            rankings[service_system_name(args.service_mode)] = (ranked, config, time.monotonic() - started)
        if "run" in args.rerank_first_stage:
            pool = read_trec_run(args.first_stage_run)
            ranked = run_rankings(pool, list(dataset.queries))
            rankings["run"] = (ranked, {"run": str(args.first_stage_run)}, 0.0)
            # a published run holds its own depth (100 for the TREC DL lists): deeper cut-offs are left out
            run_depth = max((len(hits) for hits in pool.values()), default=0)
        systems: dict[str, dict[str, Any]] = {}
        for name in [*args.retriever, *(s for s in args.rerank_first_stage if s == "run")]:
            is_service = name == "service"
            name = service_system_name(args.service_mode) if is_service else name
            ranked, config, elapsed = rankings[name]
            systems[name] = {"config": config, "seconds": round(elapsed, 2)}
            if is_service:  # the depth the service could give, for the measures below
                systems[name]["_depth"] = config["depth"]
            if name == "run":
                systems[name]["_depth"] = run_depth
        if model is not None:
            options = RerankOptions(
                first_stages=tuple(args.rerank_first_stage), depth=args.rerank_depth, score=args.rerank_score,
                batch_size=args.rerank_batch_size, index=args.index, encoder_path=args.encoder_path,
                score_cache=args.score_cache, dataset=str(args.dataset), split=args.split,
            )
            systems.update(rerank_systems(options, dataset, model, rankings, use_fused))
            for system in systems.values():
                if (system.get("rerank") or {}).get("first_stage") == "run":
                    system["_depth"] = run_depth
        for name, system in systems.items():
            ranked = system.pop("_ranked", None) or rankings[name][0]
            run = to_run({q: hits[: args.depth] for q, hits in ranked.items()})
            # A recall cut-off deeper than the ranking is the shorter ranking's recall under a wrong
            # name: measures deeper than --depth (or than a service's cap) are left out, and listed.
            depth = min(args.depth, system.pop("_depth", args.depth))
            measures, omitted = measures_within(depth)
            if omitted:
                system["omitted_metrics"] = omitted
                logger.warning("%s: %s left out (at most %d hits per query)", name, ", ".join(omitted), depth)
            system["metrics"] = evaluate_run(dataset.qrels, run, measures, relevance_level=args.relevance_level)
            if unseen is not None:
                system["metrics_unseen"] = evaluate_run(subset(dataset.qrels, unseen), run, measures,
                                                        relevance_level=args.relevance_level)
            systems[name] = {"metrics": system.pop("metrics"), **({"metrics_unseen": system.pop("metrics_unseen")} if unseen else {}),
                             **system}
            if args.run_dir:
                args.run_dir.mkdir(parents=True, exist_ok=True)
                write_trec_run(args.run_dir / f"{name}.trec", run, tag=name)
        print(f"{args.dataset.name} / {args.split}: {len(dataset.queries)} queries, depth {args.depth}")
        print(format_table({name: s["metrics"] for name, s in systems.items()}))
        if unseen is not None:
            print(f"unseen-positive subset ({len(unseen)} queries, positives unseen in {args.unseen_from}):")
            print(format_table({name: s["metrics_unseen"] for name, s in systems.items()}))
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
                **({"unseen_positive": {"from": args.unseen_from, "queries": len(unseen)}} if unseen is not None else {}),
                "systems": systems,
            }
            EvaluationReport.model_validate(report)  # the format readers rely on (evaluation.results)
            write_json_atomic(args.output, report)
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
