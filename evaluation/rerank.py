"""Rerank systems: a cross-encoder over first stages' top hits, and the fused teacher score.

For each first stage (``bm25``, ``dense``, ``hybrid`` or ``run``), its top ``depth`` hits are
re-scored by the cross-encoder (system ``rerank-<stage>``) and, when the model's config holds
fitted fusion weights, by the fused teacher score (:func:`retrieval.cross_encoder.teacher_scores`,
system ``fused-rerank-<stage>``). Cross-encoder scores are computed once per (query, passage),
shared by all stages, and optionally kept across runs in a :class:`ScoreCache` file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.cross_encoder import CrossEncoder
from retrieval.datasets import Dataset
from retrieval.errors import RetrievalError
from retrieval.retriever import Retriever
from retrieval.teacher_score import exact_bm25_scores, exact_dense_scores, teacher_scores

from .rankings import Rankings

RerankScore = Literal["cross-encoder", "fused", "both"]


@dataclass(frozen=True)
class RerankOptions:
    """What :func:`rerank_systems` reranks and how (``md2pr-evaluate``'s ``--rerank-*`` flags).

    ``first_stages``: the stages reranked, each a key of the rankings given. ``depth``: hits
    reranked per query. ``score``: which systems are written (``both``: the fused one too when the
    model has fitted fusion weights). ``index`` / ``encoder_path``: the dense index the fused score
    reads its dense side from (built by the fusion's dense encoder). ``score_cache``: a JSONL file
    of cross-encoder scores kept across runs. ``dataset`` / ``split``: the key of that cache and
    the name in error messages.
    """

    first_stages: tuple[str, ...]
    depth: int = 100
    score: RerankScore = "both"
    batch_size: int = 32
    index: Path | None = None
    encoder_path: str | None = None
    score_cache: Path | None = None
    dataset: str = ""
    split: str = ""


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


def _open_fusion_sides(model: CrossEncoder, dataset: Dataset, options: RerankOptions) -> tuple[BM25Index, Retriever]:
    """The BM25 index and dense retriever the fused score reads its first-stage sides from;
    a dense index built by another encoder than the fusion was fitted with is refused."""
    fusion = model.config.fusion
    assert fusion is not None
    bm25_index = BM25Index.build(dataset.iter_corpus(), BM25Config.from_dict(fusion.bm25) if fusion.bm25 else BM25Config())
    retriever = Retriever.open(options.index, options.encoder_path)
    wanted = fusion.dense_encoder_fingerprint
    if wanted and retriever.encoder.fingerprint != wanted:
        retriever.close()
        raise RetrievalError(
            f"{options.index}: built by encoder {retriever.encoder.fingerprint[:12]}; the teacher's fusion was fitted "
            f"with {wanted[:12]} ({fusion.dense_encoder})"
        )
    return bm25_index, retriever


def rerank_systems(
    options: RerankOptions,
    dataset: Dataset,
    model: CrossEncoder,
    rankings: dict[str, tuple[Rankings, dict[str, Any], float]],
    use_fused: bool,
) -> dict[str, dict[str, Any]]:
    """The rerank systems (``rerank-<stage>``, ``fused-rerank-<stage>``), each with ``_ranked`` rankings.

    ``rankings``: per first stage, ``(rankings, config, seconds)``. ``use_fused``: also write the
    fused systems (the model has fitted fusion weights and ``options.index`` is given). Each
    system is ``{"kind": "rerank", "_ranked", "config" (the first stage's), "seconds",
    "rerank": {"first_stage", "depth", "pairs", "scoring_seconds", "seconds_per_pair",
    "cross_encoder", "score", ["fusion"]}}``.
    """
    depth = options.depth
    needed = {d for s in options.first_stages for hits in rankings[s][0].values() for d, _ in hits[:depth]}
    passages = {p.docid: p.full_text for p in dataset.iter_corpus() if p.docid in needed}
    missing = needed - passages.keys()
    if missing:
        raise RetrievalError(f"{len(missing)} first-stage docids are not in the corpus of {options.dataset}")
    cache = ScoreCache(options.score_cache, {"fingerprint": model.fingerprint, "dataset": options.dataset, "split": options.split})
    info = {
        "source": model.source,
        "fingerprint": model.fingerprint,
        "head": model.config.head,
        "max_length": model.config.max_length,
    }
    bm25_index, retriever = _open_fusion_sides(model, dataset, options) if use_fused else (None, None)
    systems: dict[str, dict[str, Any]] = {}
    try:
        for stage in options.first_stages:
            first, config, first_seconds = rankings[stage]
            ranked, pairs, seconds = cross_encoder_rankings(
                model, dataset.queries, first, depth, passages, cache, options.batch_size
            )
            rerank = {
                "first_stage": stage,
                "depth": depth,
                "pairs": pairs,
                "scoring_seconds": round(seconds, 2),
                "seconds_per_pair": round(seconds / pairs, 4) if pairs else None,  # pairs not already cached
                "cross_encoder": info,
            }
            if options.score != "fused":
                systems[f"rerank-{stage}"] = {
                    "kind": "rerank", "_ranked": with_tail(ranked, first, depth), "config": config, "seconds": round(first_seconds + seconds, 2),
                    "rerank": {**rerank, "score": "cross_encoder"},
                }
            if use_fused:
                started = time.monotonic()
                fused = fused_teacher_rankings(model, ranked, dataset.queries, bm25_index, retriever)
                systems[f"fused-rerank-{stage}"] = {
                    "kind": "rerank", "_ranked": with_tail(fused, first, depth), "config": config,
                    "seconds": round(first_seconds + seconds + time.monotonic() - started, 2),
                    "rerank": {**rerank, "score": "fused", "fusion": model.config.fusion.model_dump()},
                }
    finally:
        if retriever is not None:
            retriever.close()
    return systems
