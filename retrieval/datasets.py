"""Whole datasets: a corpus (streamed from disk) with the queries and judgements of one split, from
a BEIR, TSV (NovelEval) or TREC DL directory, and the stable ``<split>:dev`` / ``<split>:fit``
subsets. The file readers live in :mod:`retrieval.dataset_files` and are re-exported here.

Errors are :class:`DatasetFormatError` with one-line messages naming the file (and line).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# the file readers, re-exported: the project reads its files through this module
from retrieval.dataset_files import DLPool, iter_beir_corpus, iter_corpus, iter_dl_pool_corpus, iter_tsv_corpus  # noqa: F401
from retrieval.dataset_files import read_beir_qrels, read_beir_queries, read_dl_pool_json, read_trec_qrels  # noqa: F401
from retrieval.dataset_files import read_trec_topics, read_tsv_queries  # noqa: F401
from retrieval.dataset_files import _check_file, _dl_pool_files, _fail, _show
from retrieval.types import Passage, Qrels, Queries


# --------------------------------------------------------------------------------------------
# Whole datasets


@dataclass(frozen=True)
class Dataset:
    """A corpus (streamed from disk on demand) with the queries and judgements of one split.

    ``queries`` holds only the queries judged in ``qrels``, in query-file order.
    """

    corpus_path: Path
    queries: Queries
    qrels: Qrels

    def iter_corpus(self) -> Iterator[Passage]:
        """Stream the corpus passages (see :func:`iter_corpus`)."""
        return iter_corpus(self.corpus_path)


def _judged_queries(queries: Queries, qrels: Qrels, queries_path: Path, qrels_path: Path) -> Queries:
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        shown = ", ".join(_show(qid) for qid in missing[:5]) + (", ..." if len(missing) > 5 else "")
        _fail(qrels_path, None, f"{len(missing)} judged queries are not in {queries_path.name}: {shown}")
    return {qid: text for qid, text in queries.items() if qid in qrels}


def load_beir(root: Path, split: str) -> Dataset:
    """Load a BEIR dataset directory for one split.

    Layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (see the readers). Keeps
    only the queries judged in that split; a missing split names the available ones.
    """
    root = Path(root)
    corpus_path = root / "corpus.jsonl"
    _check_file(corpus_path)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
        _fail(qrels_path, None, f"no split {split!r} (available: {', '.join(available) or 'none'})")
    queries_path = root / "queries.jsonl"
    qrels = read_beir_qrels(qrels_path)
    queries = _judged_queries(read_beir_queries(queries_path), qrels, queries_path, qrels_path)
    return Dataset(corpus_path=corpus_path, queries=queries, qrels=qrels)


def load_tsv_dataset(root: Path, split: str = "test") -> Dataset:
    """Load a TSV-layout dataset directory (NovelEval): ``corpus.tsv``, ``queries.tsv``, ``qrels.txt``.

    The layout has a single qrels file (TREC format), so the only splits are ``test`` and ``all``,
    both meaning every judgement. Keeps only judged queries.
    """
    root = Path(root)
    if split not in ("test", "all"):
        _fail(root, None, f"no split {split!r}: a TSV-layout dataset has one qrels file (use 'test' or 'all')")
    corpus_path = root / "corpus.tsv"
    _check_file(corpus_path)
    queries_path, qrels_path = root / "queries.tsv", root / "qrels.txt"
    qrels = read_trec_qrels(qrels_path)
    queries = _judged_queries(read_tsv_queries(queries_path), qrels, queries_path, qrels_path)
    return Dataset(corpus_path=corpus_path, queries=queries, qrels=qrels)


def load_dl_pools(root: Path, split: str) -> Dataset:
    """Load a TREC DL directory (as under ``msmarco_trec_dl/``) for one year, e.g. ``dl19``.

    Layout: ``qrels.<split>-passage.txt`` (TREC qrels, graded 0-3), ``topics.<split>*.txt``
    (``qid<TAB>text``) and per first-stage retriever ``<name>/retrieve_results_<split>.json``.
    The corpus is the union of all pools in the directory (relative comparisons only: it is
    not the full MS MARCO collection). Keeps only judged queries; ``test`` means the only
    year with qrels when there is exactly one.
    """
    root = Path(root)
    years = sorted(p.name.removeprefix("qrels.").removesuffix("-passage.txt") for p in root.glob("qrels.*-passage.txt"))
    if split == "test" and len(years) == 1:
        split = years[0]
    if split not in years:
        _fail(root, None, f"no judged split {split!r} (available: {', '.join(years) or 'none'})")
    qrels_path = root / f"qrels.{split}-passage.txt"
    topics = sorted(root.glob(f"topics.{split}*.txt"))
    if not topics:
        _fail(root, None, f"no topics file topics.{split}*.txt")
    qrels = read_trec_qrels(qrels_path)
    queries = _judged_queries(read_trec_topics(topics[0]), qrels, topics[0], qrels_path)
    return Dataset(corpus_path=root, queries=queries, qrels=qrels)


def load_unjudged_queries(root: Path, split: str) -> Queries:
    """The queries of a TREC DL directory's topic set ``split`` (``topics.<split>*.txt``) that no
    qrels file of the directory judges, in topic-file order.

    These are the unlabelled queries distillation can learn from (the teacher labels their
    candidates): DL21 has 477 topics of which 53 are judged, DL22 has 500 and no qrels. Leaving
    out every judged query, of any year, keeps the ``:dev`` queries out of training.
    """
    root = Path(root)
    if not _dl_pool_files(root):
        _fail(root, None, "unlabelled queries are read from TREC DL topic files: not a TREC DL pool directory")
    topics = sorted(root.glob(f"topics.{split}*.txt"))
    if not topics:
        available = sorted({p.name.removeprefix("topics.").split(".")[0].split("-")[0] for p in root.glob("topics.*.txt")})
        _fail(root, None, f"no topics file topics.{split}*.txt (topic sets: {', '.join(available) or 'none'})")
    judged: set[str] = set()
    for path in root.glob("qrels.*-passage.txt"):
        judged.update(read_trec_qrels(path))
    return {qid: text for qid, text in read_trec_topics(topics[0]).items() if qid not in judged}


#: Fraction of a split's queries held out by the ``<split>:dev`` subset.
DEV_FRACTION = 0.2


def in_dev_subset(query_id: str) -> bool:
    """Whether a query belongs to the held-out dev subset of its split.

    Decided by a hash of the id alone, so the subset is stable across runs, machines and
    code versions, and a query never moves between ``:dev`` and ``:fit``.
    """
    digest = hashlib.sha1(f"md2pr-dev:{query_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < DEV_FRACTION


def load_dataset(root: Path, split: str) -> Dataset:
    """Load a dataset directory: BEIR layout (``corpus.jsonl``), TSV layout (``corpus.tsv``) or
    TREC DL pools (:func:`load_dl_pools`).

    ``split`` names a qrels split (``test``, ``train``, ...); ``<split>:dev`` keeps the
    held-out ~20% of its queries (:func:`in_dev_subset`) and ``<split>:fit`` the rest, so
    weights and hyper-parameters are tuned on training queries, never on test.
    """
    root = Path(root)
    base, _, subset = split.partition(":")
    if subset not in ("", "dev", "fit"):
        _fail(root, None, f"unknown subset {subset!r} in split {split!r} (use <split>:dev or <split>:fit)")
    if (root / "corpus.jsonl").is_file():
        dataset = load_beir(root, base)
    elif (root / "corpus.tsv").is_file():
        dataset = load_tsv_dataset(root, base)
    elif _dl_pool_files(root):
        dataset = load_dl_pools(root, base)
    else:
        _fail(root, None, "not a dataset directory: no corpus.jsonl (BEIR), corpus.tsv (TSV) or TREC DL pools")
    if not subset:
        return dataset
    keep = {q for q in dataset.queries if in_dev_subset(q) == (subset == "dev")}
    return Dataset(
        dataset.corpus_path,
        {q: t for q, t in dataset.queries.items() if q in keep},
        {q: r for q, r in dataset.qrels.items() if q in keep},
    )
