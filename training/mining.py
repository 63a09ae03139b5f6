"""``md2pr-mine``: hard negatives for every training query, from BM25 and a dense index.

Example::

    md2pr-mine --dataset ../shared/data/scifact --split train --index artifacts/indexes/scifact \\
        --depth 30 --output artifacts/teacher/scifact-train.jsonl

For each judged query: each source's top ``--depth``, labelled positives (relevance >= ``--relevance-level``, default 1) removed,
duplicates merged (a docid keeps the rank each source gave it), ordered by best rank; every
candidate also carries each source's exact score. The output format is documented in
:mod:`training.data`. ``--index`` takes the base student's index first and the current
student's in later distillation iterations; without it only BM25 is mined.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Collection, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.cross_encoder import exact_bm25_scores, exact_dense_scores
from retrieval.datasets import Dataset, load_dataset
from retrieval.paths import data_dir
from retrieval.retriever import Retriever
from retrieval.runtime import run_job

from .data import Candidate, TrainingHeader, TrainingRecord, write_training_file
from .errors import TrainingError

logger = logging.getLogger(__name__)


def dense_source_info(retriever: Retriever) -> dict:
    """How the header describes a dense source (index directory, encoder source, fingerprint)."""
    return {
        "index": str(retriever.index.directory),
        "encoder": retriever.index.manifest.encoder.source,
        "fingerprint": retriever.encoder.fingerprint,
    }


def mine(
    dataset: Dataset,
    bm25: BM25Index | None,
    retriever: Retriever | None,
    depth: int,
    show_progress: bool = True,
    unlabelled: bool = False,
    relevance_level: int = 1,
    corpus_ids: Collection[str] | None = None,
) -> Iterator[TrainingRecord]:
    """Yield one :class:`TrainingRecord` per judged query of ``dataset`` (query-file order).

    ``unlabelled``: ``dataset``'s queries have no judgements (see
    :func:`retrieval.datasets.load_unjudged_queries`); every query yields a record with no
    positives and every retrieved candidate as a negative, for the teacher to label.

    Labelled positives never appear among the negatives, whatever rank a source gave them.
    ``relevance_level`` is the lowest grade trained as a positive: with graded judgements (TREC
    DL: 1 related, 2 highly relevant, 3 perfect) ``2`` trains on the passages that answer the
    query, and a passage judged below it but above 0 is neither a positive nor a negative.
    Positives must have text to train on: a judged docid missing from the corpus (a corpus made
    of first-stage pools, like the TREC DL ones, lacks many judged passages) is left out, and
    a query left with no positive yields no record. Both counts are logged. ``corpus_ids``: the
    corpus's docids, when the caller holds them already (else one pass over the corpus reads them).
    """
    if bm25 is None and retriever is None:
        raise TrainingError("mining needs at least one source (BM25 or a dense index)")
    if depth < 1:
        raise TrainingError(f"depth must be positive, got {depth}")
    if corpus_ids is None:
        corpus_ids = {p.docid for p in dataset.iter_corpus()}
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    missing_positives = 0
    no_positive: list[str] = []
    vectors = retriever.encoder.encode_queries(texts) if retriever is not None else None  # [n, dim]
    # IndexArtifact.search directly: rows -> docids, ranks 1-based; row -1 means "no result"
    dense_rows = retriever.index.search(vectors, depth)[1] if retriever is not None else None  # [n, depth]
    for i, qid in enumerate(tqdm(qids, desc="mining", unit="query", disable=not show_progress)):
        judged = dataset.qrels.get(qid, {})
        judged_positive = [d for d, rel in judged.items() if rel >= relevance_level]
        ignored = {d for d, rel in judged.items() if 0 < rel < relevance_level}
        positive_ids = [d for d in judged_positive if d in corpus_ids]
        missing_positives += len(judged_positive) - len(positive_ids)
        if not positive_ids and not unlabelled:
            no_positive.append(qid)
            continue
        ranks: dict[str, dict[str, int]] = {}
        if bm25 is not None:
            for rank, (docid, _) in enumerate(bm25.search([texts[i]], depth)[0], start=1):
                ranks.setdefault(docid, {})["bm25"] = rank
        if dense_rows is not None:
            for rank, row in enumerate((r for r in dense_rows[i].tolist() if r >= 0), start=1):
                ranks.setdefault(retriever.index.docids[row], {})["dense"] = rank
        negative_ids = sorted(
            (d for d in ranks if d not in positive_ids and d not in ignored), key=lambda d: (min(ranks[d].values()), d)
        )
        every = positive_ids + negative_ids
        scores: dict[str, list[float | None]] = {}
        if bm25 is not None:
            scores["bm25"] = list(exact_bm25_scores(bm25, texts[i], every))
        if retriever is not None:
            scores["dense"] = exact_dense_scores(retriever, vectors[i], every)

        candidates = [
            Candidate(
                docid=docid,
                relevance=judged.get(docid, 0),
                sources=ranks.get(docid, {}),
                scores={name: values[j] for name, values in scores.items()},
            )
            for j, docid in enumerate(every)
        ]
        n = len(positive_ids)
        yield TrainingRecord(query_id=qid, query=texts[i], positives=candidates[:n], negatives=candidates[n:])
    if missing_positives or no_positive:
        logger.warning("%d judged positives are not in the corpus %s and were left out; %d queries had no positive "
                       "left and were skipped%s", missing_positives, dataset.corpus_path, len(no_positive),
                       f" (e.g. {no_positive[0]!r})" if no_positive else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-mine", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=data_dir() / "scifact", help="BEIR or TSV dataset directory")
    parser.add_argument("--split", default="train", help="qrels split, e.g. train (default) or train:fit")
    parser.add_argument("--index", type=Path, help="dense index (root or version) built with the mining encoder")
    parser.add_argument("--encoder-path", help="load the index's encoder from here (fingerprint still checked)")
    parser.add_argument("--no-bm25", action="store_true", help="mine from the dense index only")
    parser.add_argument("--depth", type=int, default=30, help="top-k taken from each source (default: %(default)s)")
    parser.add_argument("--relevance-level", type=int, default=1,
                        help="lowest grade trained as a positive; judged grades between 0 and it are left out "
                             "(default: %(default)s; 2 for TREC DL)")
    parser.add_argument("--output", type=Path, required=True, help="training file to write (JSONL)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.no_bm25 and args.index is None:
        parser.error("--no-bm25 needs --index")
    if args.depth < 1:
        parser.error("--depth must be positive")
    if args.relevance_level < 1:
        parser.error("--relevance-level must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(_threads: int) -> int:
        dataset = load_dataset(args.dataset, args.split)
        if not dataset.queries:
            raise TrainingError(f"{args.dataset}: split {args.split!r} has no judged queries")
        sources: dict[str, dict] = {}
        bm25 = None
        if not args.no_bm25:
            config = BM25Config()
            bm25 = BM25Index.build(dataset.iter_corpus(), config)
            sources["bm25"] = config.to_dict()
        retriever = Retriever.open(args.index, args.encoder_path) if args.index else None
        try:
            if retriever is not None:
                sources["dense"] = dense_source_info(retriever)
            header = TrainingHeader(dataset=str(args.dataset), split=args.split, depth=args.depth,
                                    relevance_level=args.relevance_level, sources=sources)
            records = list(mine(dataset, bm25, retriever, args.depth, show_progress=not args.no_progress,
                                relevance_level=args.relevance_level,
                                corpus_ids=set(bm25.docids) if bm25 is not None else None))
        finally:
            if retriever is not None:
                retriever.close()
        count = write_training_file(args.output, header, records)
        negatives = np.mean([len(r.negatives) for r in records]) if records else 0.0
        found = sum(1 for r in records for p in r.positives if p.sources)
        total = sum(len(r.positives) for r in records)
        logger.info(
            "wrote %d queries to %s: %.1f negatives a query; %d of %d positives retrieved in some top-%d",
            count, args.output, negatives, found, total, args.depth,
        )
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
