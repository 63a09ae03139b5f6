"""The data a distillation run trains and evaluates on: hidden positives (the filter check), the
unlabelled queries, the students' Flat indexes of the corpus and their dev measures."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from retrieval.datasets import Dataset, iter_corpus, load_unjudged_queries
from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError
from retrieval.index import EncoderRef, read_manifest
from retrieval.index_writer import build_flat_index, passage_encoding
from retrieval.metrics import DEFAULT_MEASURES, evaluate_run, subset
from retrieval.retriever import Retriever

from .config import DEV_MEASURES


def hidden_positives(qrels: dict[str, dict[str, int]], fraction: float, seed: int, relevance_level: int = 1) -> dict[str, set[str]]:
    """Judged positives hidden from training (the false-negative filter check).

    A (query, docid) pair is hidden when a hash of the pair and ``seed`` falls below
    ``fraction``: stable across runs and independent of file order.
    """
    hidden: dict[str, set[str]] = {}
    if fraction <= 0:
        return hidden
    for qid, judged in qrels.items():
        for docid, rel in judged.items():
            digest = hashlib.sha1(f"md2pr-hide:{seed}:{qid}:{docid}".encode()).digest()
            if rel >= relevance_level and int.from_bytes(digest[:8], "big") / 2**64 < fraction:
                hidden.setdefault(qid, set()).add(docid)
    return hidden


def without(dataset: Dataset, hidden: dict[str, set[str]]) -> Dataset:
    """``dataset`` with the ``hidden`` judgements removed (they become unjudged passages)."""
    if not hidden:
        return dataset
    qrels = {q: {d: r for d, r in docs.items() if d not in hidden.get(q, ())} for q, docs in dataset.qrels.items()}
    return Dataset(dataset.corpus_path, dataset.queries, qrels)


def build_student_index(
    encoder: DualEncoder, corpus: Path, directory: Path, batch_size: int = 32, show_progress: bool = True, chunk: int = 1024
) -> Path:
    """Encode the corpus with ``encoder`` into a Flat index at ``directory`` (kept if already complete),
    through :func:`retrieval.index_writer.build_flat_index`, the Flat build every index build shares.

    The manifest names the encoder's fingerprint, so :class:`retrieval.retriever.Retriever`
    refuses it with any other student.
    """
    if (directory / "manifest.json").is_file():
        try:
            if read_manifest(directory).encoder.fingerprint == encoder.fingerprint:
                return directory
        except ArtifactError:
            pass
    shutil.rmtree(directory, ignore_errors=True)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tqdm(desc=f"encoding corpus ({directory.name})", unit="passage", disable=not show_progress) as progress:
        build_flat_index(
            iter_corpus(corpus), tmp, passage_encoding(encoder, batch_size), encoder.dimension,
            EncoderRef(source=encoder.source, fingerprint=encoder.fingerprint), chunk_size=chunk,
            build={"corpus": str(corpus), "purpose": "distillation mining and dev evaluation"},
            label=str(corpus), on_chunk=progress.update,
        )
    os.replace(tmp, directory)
    return directory


def evaluate_dev(
    retriever: Retriever, dev: Dataset, depth: int, relevance_level: int = 1, query_ids: Sequence[str] | None = None
) -> dict[str, float] | None:
    """nDCG@10, MRR@10 and R@100 of the retriever on the dev queries (``None`` without dev queries);
    grades from ``relevance_level`` up are relevant for MRR and recall. ``query_ids``: only those
    dev queries (the unseen-positive subset; ``None`` when it is empty)."""
    queries = dev.queries if query_ids is None else {q: dev.queries[q] for q in query_ids if q in dev.queries}
    if not queries:
        return None
    run = retriever.search_run(queries, depth)
    qrels = dev.qrels if query_ids is None else subset(dev.qrels, queries)
    return evaluate_run(qrels, run, {name: DEFAULT_MEASURES[name] for name in DEV_MEASURES}, relevance_level)



#: The topic-set name of the corpus's own pseudo-queries (GPL-style): each passage's title is a
#: query (id ``title:<docid>``), labelled by the teacher like any unlabelled query.
CORPUS_TITLES = "corpus-titles"


def title_queries(corpus_path: Path) -> dict[str, str]:
    """Every titled passage's title as a pseudo-query, ``{"title:<docid>": title}``, in a fixed
    pseudo-random order (a hash of the docid), so that a ``limit`` takes a spread-out sample
    rather than the corpus's first passages."""
    titled = [(p.docid, p.title.strip()) for p in iter_corpus(corpus_path) if p.title.strip()]
    titled.sort(key=lambda x: hashlib.sha1(f"md2pr-title:{x[0]}".encode()).digest())
    return {f"title:{docid}": title for docid, title in titled}


def with_title_queries(dataset: Dataset, count: int) -> Dataset:
    """``dataset`` plus the first ``count`` of :func:`title_queries`, each judged relevant (grade 1)
    to its own passage only. The dev split and the unseen-positive subsets never see them."""
    if count <= 0:
        return dataset
    titles = dict(list(title_queries(dataset.corpus_path).items())[:count])
    qrels = {qid: {qid.removeprefix("title:"): 1} for qid in titles}
    return Dataset(dataset.corpus_path, {**dataset.queries, **titles}, {**dataset.qrels, **qrels})


def unlabelled_dataset(root: Path, corpus_path: Path, topic_sets: Sequence[str], limit: int | None) -> Dataset:
    """The unjudged queries of ``topic_sets`` (:func:`retrieval.datasets.load_unjudged_queries`;
    :data:`CORPUS_TITLES`: :func:`title_queries`), in order, deduplicated, the first ``limit`` of
    them; no qrels."""
    queries: dict[str, str] = {}
    for name in topic_sets:
        found = title_queries(corpus_path) if name == CORPUS_TITLES else load_unjudged_queries(root, name)
        for qid, text in found.items():
            queries.setdefault(qid, text)
    if limit is not None:
        queries = dict(list(queries.items())[:limit])
    return Dataset(corpus_path, queries, {})


