"""First-stage rankings of a dataset's queries: BM25, a dense index, and their hybrid fusion.

Every system ``md2pr-evaluate`` scores is first a :data:`Rankings`: per query id, ``(docid,
score)`` pairs best first. :func:`to_run` turns one into the ``{qid: {docid: score}}`` run that
:func:`retrieval.metrics.evaluate_run` scores. Each ``*_rankings`` function also returns the
configuration it used (written into the report's ``"config"``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.datasets import Dataset
from retrieval.encoder import DualEncoder
from retrieval.fusion import FusionConfig, fuse
from retrieval.index import IndexArtifact
from retrieval.index_versions import resolve_index_dir
from retrieval.metrics import DEFAULT_MEASURES
from retrieval.pairing import check_pairing
from retrieval.retriever import Retriever
from retrieval.types import Run

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


def run_rankings(pool: Run, query_ids: list[str]) -> Rankings:
    """A read TREC run (a published first stage) as rankings of ``query_ids``, best first
    (ties by docid); a query the run lacks gets an empty list."""
    return {q: sorted(pool.get(q, {}).items(), key=lambda h: (-h[1], h[0])) for q in query_ids}


def to_run(rankings: Rankings) -> Run:
    """``{qid: {docid: score}}``, the shape :func:`retrieval.metrics.evaluate_run` scores."""
    return {q: dict(hits) for q, hits in rankings.items()}


def measures_within(depth: int) -> tuple[dict[str, Any], list[str]]:
    """The default measures whose cut-off is at most ``depth``, and the names of those left out.

    A recall at a cut-off deeper than the ranking is the recall of the shorter ranking under
    a wrong name, so a system that could not retrieve as deep as asked reports none.
    """
    kept = {name: m for name, m in DEFAULT_MEASURES.items() if (m.params.get("cutoff") or 0) <= depth}
    return kept, [name for name in DEFAULT_MEASURES if name not in kept]
