"""``md2pr-evaluate``: BM25, a dense index and/or a running service on a dataset split -> metrics table and JSON.

Example::

    md2pr-evaluate --dataset ../shared/data/scifact --split test \\
        --retriever bm25 --retriever dense --index artifacts/indexes/scifact --output scifact.json

Service mode (``--retriever service --service-url URL``): the split's queries are sent to a
running md2pr service (``POST /search``, ``--service-mode`` dense, bm25 or hybrid) and its
answers are scored like in-process retrieval (:mod:`retrieval.service_client`). The system is
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
(:func:`retrieval.cross_encoder.teacher_scores`, system ``fused-rerank-<stage>``; needs
``--index``, built by the fusion's dense encoder). Cross-encoder scores are computed once per
(query, passage) and shared by all stages; ``--score-cache FILE`` keeps them across runs.

The JSON written by ``--output`` is ``{"command", "machine", "dataset", "split", "queries", "depth",
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
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .bm25 import BM25Config, BM25Index
from .cross_encoder import (
    CrossEncoder,
    exact_bm25_scores,
    exact_dense_scores,
    teacher_scores,
)
from .datasets import Dataset, load_dataset
from .encoder import DualEncoder
from .errors import RetrievalError
from .fusion import FusionConfig, fuse
from .index import IndexArtifact
from .index_versions import resolve_index_dir
from . import service_client
from .metrics import DEFAULT_MEASURES, evaluate_run, format_table, read_trec_run, subset, unseen_positive_queries, write_trec_run
from .pairing import check_pairing
from .paths import data_dir
from .retriever import Retriever
from .runtime import run_job
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


def paired_dense_rankings(dataset: Dataset, depth: int, index_path: Path, query_encoder: str) -> tuple[Rankings, dict[str, Any]]:
    """Dense retrieval with a query-tower student's query vectors against the index of the passage
    encoder it pairs with (:mod:`retrieval.pairing`; any other index is refused)."""
    index = IndexArtifact.open(resolve_index_dir(Path(index_path)))
    try:
        encoder = DualEncoder.from_pretrained(query_encoder)
        check_pairing(encoder.model_dir, encoder.fingerprint, index.manifest.encoder.fingerprint, str(index.directory))
        qids = list(dataset.queries)
        vectors = encoder.encode_queries([dataset.queries[q] for q in qids])  # [queries, dim]
        scores, rows = index.search(vectors, depth)  # [queries, depth]
        ranked = {q: [(index.docids[r], float(s)) for s, r in zip(scores[i], rows[i]) if r >= 0] for i, q in enumerate(qids)}
        return ranked, {
            "index": str(index.directory), "factory": index.manifest.factory, "encoder": index.manifest.encoder.model_dump(),
            "query_encoder": {"source": str(query_encoder), "fingerprint": encoder.fingerprint},
            "encoder_config": encoder.config.model_dump(), "corpus_size": index.manifest.count,
        }
    finally:
        index.close()


def dense_rankings(
    dataset: Dataset, depth: int, index_path: Path, encoder_path: str | None, query_encoder: str | None = None
) -> tuple[Rankings, dict[str, Any]]:
    """Dense retrieval against a built index; warns when judged docids are absent from the index.
    ``query_encoder``: a query-tower student's directory (:func:`paired_dense_rankings`)."""
    if query_encoder:
        return paired_dense_rankings(dataset, depth, index_path, query_encoder)
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


def service_system_name(mode: str) -> str:
    """``service`` for the dense mode, ``service-<mode>`` for the others."""
    return "service" if mode == "dense" else f"service-{mode}"


def measures_within(depth: int) -> tuple[dict[str, Any], list[str]]:
    """The default measures whose cut-off is at most ``depth``, and the names of those left out.

    A recall at a cut-off deeper than the ranking is the recall of the shorter ranking under
    a wrong name, so a system that could not retrieve as deep as asked reports none.
    """
    kept = {name: m for name, m in DEFAULT_MEASURES.items() if (m.params.get("cutoff") or 0) <= depth}
    return kept, [name for name in DEFAULT_MEASURES if name not in kept]


class ScoreCache:
    """Cross-encoder scores by ``(query_id, docid)``, optionally kept in a JSONL file.

    File: line 1 ``{"fingerprint": <cross-encoder fingerprint>, "dataset": ..., "split": ...}``,
    then one ``{"q": query_id, "d": docid, "s": score}`` per pair. A file written for another
    model or dataset is refused rather than mixed in.
    """

    def __init__(self, path: Path | None, key: dict[str, str]) -> None:
        self.path = path
        self.scores: dict[tuple[str, str], float] = {}
        if path is None:
            return
        if path.is_file() and path.stat().st_size:
            with path.open(encoding="utf-8") as f:
                header = json.loads(f.readline())
                if header != key:
                    raise RetrievalError(f"{path}: score cache of another model or dataset ({header}); use another file")
                for line in f:
                    if line.endswith("\n"):  # a line cut by a kill is ignored
                        entry = json.loads(line)
                        self.scores[(entry["q"], entry["d"])] = float(entry["s"])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(key) + "\n", encoding="utf-8")

    def add(self, qid: str, docids: list[str], scores: list[float]) -> None:
        for docid, score in zip(docids, scores):
            self.scores[(qid, docid)] = score
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"q": qid, "d": d, "s": sc}) + "\n" for d, sc in zip(docids, scores)))


def cross_encoder_rankings(
    model: CrossEncoder,
    queries: dict[str, str],
    first_stage: Rankings,
    depth: int,
    passages: dict[str, str],
    cache: ScoreCache,
    batch_size: int = 32,
) -> tuple[Rankings, int, float]:
    """Rerank each query's first ``depth`` hits by the cross-encoder: ``(rankings, pairs scored, seconds)``.

    Pairs already in ``cache`` are not scored again; the others are added to it, query by query.
    """
    from tqdm import tqdm

    pairs, seconds = 0, 0.0
    reranked: Rankings = {}
    for qid in tqdm(list(first_stage), desc="reranking", unit="query", disable=None, mininterval=10):
        docids = [d for d, _ in first_stage[qid][:depth]]
        todo = [d for d in docids if (qid, d) not in cache.scores]
        if todo:
            started = time.monotonic()
            scores = model.score([queries[qid]] * len(todo), [passages[d] for d in todo], batch_size=batch_size)
            seconds += time.monotonic() - started
            pairs += len(todo)
            cache.add(qid, todo, [float(x) for x in scores])
        reranked[qid] = sorted(((d, cache.scores[(qid, d)]) for d in docids), key=lambda h: (-h[1], h[0]))
    return reranked, pairs, seconds


def with_tail(reranked: Rankings, first_stage: Rankings, depth: int) -> Rankings:
    """Each reranked top ``depth`` followed by the rest of the first stage's list, in its order.

    The tail gets scores below the reranked ones, so recall at depths beyond ``depth`` is the
    first stage's, as in the usual reranking evaluation.
    """
    out: Rankings = {}
    for qid, hits in reranked.items():
        floor = min((score for _, score in hits), default=0.0)
        tail = first_stage.get(qid, [])[depth:]
        out[qid] = hits + [(docid, floor - 1.0 - i) for i, (docid, _) in enumerate(tail)]
    return out


def fused_teacher_rankings(
    model: CrossEncoder, ce: Rankings, queries: dict[str, str], bm25_index: BM25Index, retriever: Retriever
) -> Rankings:
    """Re-score each reranked list with the fused teacher score (exact BM25 and dense scores)."""
    fusion = model.config.fusion
    assert fusion is not None
    vectors = retriever.encoder.encode_queries([queries[q] for q in ce])  # [n, dim]
    out: Rankings = {}
    for vector, (qid, hits) in zip(vectors, ce.items()):
        docids = [d for d, _ in hits]
        fused = teacher_scores(
            docids,
            [s for _, s in hits],
            bm25=exact_bm25_scores(bm25_index, queries[qid], docids),
            dense=exact_dense_scores(retriever, vector, docids),
            fusion=fusion,
        )
        out[qid] = sorted(zip(docids, fused.tolist()), key=lambda h: (-h[1], h[0]))
    return out


def rerank_systems(
    args: argparse.Namespace,
    dataset: Dataset,
    model: CrossEncoder,
    rankings: dict[str, tuple[Rankings, dict[str, Any], float]],
    use_fused: bool,
) -> dict[str, dict[str, Any]]:
    """The rerank systems (``rerank-<stage>``, ``fused-rerank-<stage>``), each with ``_ranked`` rankings."""
    needed = {d for s in args.rerank_first_stage for hits in rankings[s][0].values() for d, _ in hits[: args.rerank_depth]}
    passages = {p.docid: p.full_text for p in dataset.iter_corpus() if p.docid in needed}
    missing = needed - passages.keys()
    if missing:
        raise RetrievalError(f"{len(missing)} first-stage docids are not in the corpus of {args.dataset}")
    key = {"fingerprint": model.fingerprint, "dataset": str(args.dataset), "split": args.split}
    cache = ScoreCache(args.score_cache, key)
    info = {
        "source": model.source,
        "fingerprint": model.fingerprint,
        "head": model.config.head,
        "max_length": model.config.max_length,
    }
    bm25_index = retriever = None
    if use_fused:
        bm25_config = BM25Config.from_dict(model.config.fusion.bm25) if model.config.fusion.bm25 else BM25Config()
        bm25_index = BM25Index.build(dataset.iter_corpus(), bm25_config)
        retriever = Retriever.open(args.index, args.encoder_path)
        wanted = model.config.fusion.dense_encoder_fingerprint
        if wanted and retriever.encoder.fingerprint != wanted:
            retriever.close()
            raise RetrievalError(
                f"{args.index}: built by encoder {retriever.encoder.fingerprint[:12]}; the teacher's fusion was fitted "
                f"with {wanted[:12]} ({model.config.fusion.dense_encoder})"
            )
    systems: dict[str, dict[str, Any]] = {}
    try:
        for stage in args.rerank_first_stage:
            first, config, first_seconds = rankings[stage]
            ranked, pairs, seconds = cross_encoder_rankings(
                model, dataset.queries, first, args.rerank_depth, passages, cache, args.rerank_batch_size
            )
            rerank = {
                "first_stage": stage,
                "depth": args.rerank_depth,
                "pairs": pairs,
                "scoring_seconds": round(seconds, 2),
                "seconds_per_pair": round(seconds / pairs, 4) if pairs else None,  # pairs not already cached
                "cross_encoder": info,
            }
            if args.rerank_score != "fused":
                systems[f"rerank-{stage}"] = {
                    "kind": "rerank", "_ranked": with_tail(ranked, first, args.rerank_depth), "config": config, "seconds": round(first_seconds + seconds, 2),
                    "rerank": {**rerank, "score": "cross_encoder"},
                }
            if use_fused:
                started = time.monotonic()
                fused = fused_teacher_rankings(model, ranked, dataset.queries, bm25_index, retriever)
                systems[f"fused-rerank-{stage}"] = {
                    "kind": "rerank", "_ranked": with_tail(fused, first, args.rerank_depth), "config": config,
                    "seconds": round(first_seconds + seconds + time.monotonic() - started, 2),
                    "rerank": {**rerank, "score": "fused", "fusion": model.config.fusion.model_dump()},
                }
    finally:
        if retriever is not None:
            retriever.close()
    return systems


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
    parser.add_argument("--bm25-stemmer", default=None, help="e.g. 'english' (default: none)")
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
            ranked = {q: sorted(pool.get(q, {}).items(), key=lambda h: (-h[1], h[0])) for q in dataset.queries}
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
            systems.update(rerank_systems(args, dataset, model, rankings, use_fused))
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
            args.output.write_text(json.dumps(report, indent=2))
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
