"""BM25 baseline (and first-round negative miner) on bm25s.

A passage is indexed through :attr:`Passage.full_text` (title + " " + text). Corpus and
queries go through the same private tokeniser: lower-casing, bm25s' word pattern, stop-word
removal and an optional PyStemmer stemmer, all fixed by :class:`BM25Config`.

Saved index directory::

    <dir>/bm25_index.json        {"format": "md2pr-bm25", "version": 1,
                                  "config": BM25Config.to_dict(), "docids": [...]}
    <dir>/params.index.json, vocab.index.json, *.csc.index.npy   (bm25s' own files)

Row ``i`` of the bm25s index is ``docids[i]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import bm25s

from retrieval.errors import ArtifactError, InvalidValueError
from retrieval.types import Passage, Queries, Run

META_FILE = "bm25_index.json"
_FORMAT = "md2pr-bm25"
_VERSION = 1


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters and tokenisation; saved with every index.

    ``stopwords`` is a bm25s stop-word list name (``"en"``) or ``None``; ``stemmer`` a
    PyStemmer algorithm name (``"english"``: Snowball's Porter2) or ``None``. The default is
    Lucene BM25, k1=0.9, b=0.4, English stop words, ``english`` stemming: chosen on training
    queries (SciFact train:dev nDCG@10 0.668 against 0.637 unstemmed, TREC DL21 0.395 against
    0.384; ``benchmarks/bm25_tokenisation.py``, RESULTS.md "BM25 stemming").
    """

    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str | None = "en"
    stemmer: str | None = "english"

    def __post_init__(self) -> None:
        # checked when the config is made, so that a build refuses a misspelt stemmer before it
        # encodes the corpus, not when it reaches the BM25 side index
        if self.stemmer is not None:
            import Stemmer  # PyStemmer

            if self.stemmer not in Stemmer.algorithms():
                raise InvalidValueError(f"unknown PyStemmer algorithm {self.stemmer!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict (inverse: :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BM25Config:
        """Rebuild a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InvalidValueError(f"unknown BM25Config keys: {sorted(unknown)}")
        return cls(**data)


def stemmer_option(value: str) -> str | None:
    """A command line's stemmer: a PyStemmer algorithm name, or ``none`` (any case) for no stemming."""
    return None if value.strip().lower() == "none" else value


def _tokenize(texts: Sequence[str], config: BM25Config, show_progress: bool) -> list[list[str]]:
    """The one tokeniser for corpus and queries: text -> list of (stemmed) terms."""
    stemmer = None
    if config.stemmer is not None:  # a known algorithm: BM25Config checked it
        import Stemmer  # PyStemmer

        stemmer = Stemmer.Stemmer(config.stemmer)
    return bm25s.tokenize(
        list(texts),
        stopwords=config.stopwords,
        stemmer=stemmer,
        return_ids=False,
        show_progress=show_progress,
    )


class BM25Index:
    """A bm25s index over passages, addressed by docid.

    ``n_threads`` is the number of threads bm25s uses to score queries (1 = sequential);
    ``show_progress`` turns bm25s' progress bars on.
    """

    def __init__(
        self,
        retriever: bm25s.BM25,
        docids: list[str],
        config: BM25Config,
        *,
        n_threads: int = 1,
        show_progress: bool = False,
    ) -> None:
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self._retriever = retriever
        self.docids = docids
        self.config = config
        self.n_threads = n_threads
        self.show_progress = show_progress

    def __len__(self) -> int:
        return len(self.docids)

    @classmethod
    def build(
        cls,
        passages: Iterable[Passage],
        config: BM25Config = BM25Config(),
        *,
        n_threads: int = 1,
        show_progress: bool = False,
    ) -> BM25Index:
        """Index ``passages`` (their :attr:`~Passage.full_text`); docids must be unique."""
        docids: list[str] = []
        texts: list[str] = []
        for passage in passages:
            docids.append(passage.docid)
            texts.append(passage.full_text)
        if not docids:
            raise InvalidValueError("cannot build a BM25 index over an empty corpus")
        if len(set(docids)) != len(docids):
            raise InvalidValueError("duplicate docids in the corpus")
        tokens = _tokenize(texts, config, show_progress)
        if not any(tokens):
            raise InvalidValueError("the corpus has no indexable terms (all passages empty or stop words)")
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=show_progress)
        return cls(retriever, docids, config, n_threads=n_threads, show_progress=show_progress)

    def search(self, queries: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
        """For each query, up to ``top_k`` ``(docid, score)`` pairs, best first.

        ``top_k`` is clipped to the corpus size. Documents scoring 0 (no query term in
        common) are dropped, so a list may be shorter. Ties are ordered by docid.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not queries:
            return []
        tokens = _tokenize(queries, self.config, show_progress=False)
        rows, scores = self._retriever.retrieve(
            tokens,
            k=min(top_k, len(self.docids)),
            show_progress=self.show_progress,
            n_threads=0 if self.n_threads == 1 else self.n_threads,
        )
        results = []
        for row_ids, row_scores in zip(rows.tolist(), scores.tolist()):
            hits = [(self.docids[i], float(s)) for i, s in zip(row_ids, row_scores) if s > 0]
            hits.sort(key=lambda hit: (-hit[1], hit[0]))
            results.append(hits)
        return results

    def exact_scores(self, query: str, docids: Sequence[str]) -> list[float]:
        """BM25 scores of ``docids`` for ``query``, exact for every docid (0 when no query term occurs,
        or the docid is not indexed).

        Scores the whole corpus (a search as deep as the index), so it is meant for corpora of
        thousands to tens of thousands of passages such as SciFact or the TREC DL pools.
        """
        scored = dict(self.search([query], len(self))[0])
        return [scored.get(d, 0.0) for d in docids]

    def search_run(self, queries: Queries, top_k: int) -> Run:
        """Search every query; ``{query_id: {docid: score}}`` (every query id present)."""
        qids = list(queries)
        hits = self.search([queries[q] for q in qids], top_k)
        return {qid: dict(h) for qid, h in zip(qids, hits)}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index to ``directory`` (created if needed; see the module docstring)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._retriever.save(directory, show_progress=self.show_progress)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "config": self.config.to_dict(),
            "docids": self.docids,
        }
        (directory / META_FILE).write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        n_threads: int = 1,
        show_progress: bool = False,
    ) -> BM25Index:
        """Load an index written by :meth:`save`; a missing or corrupt one raises ArtifactError."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise ArtifactError(f"{directory}: not a BM25 index ({META_FILE} missing)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            found = (meta.get("format"), meta.get("version"))
            if found != (_FORMAT, _VERSION):
                raise ValueError(f"unsupported format/version {found}")
            config = BM25Config.from_dict(meta["config"])
            docids = meta["docids"]
            if not isinstance(docids, list) or not all(isinstance(d, str) for d in docids):
                raise ValueError("'docids' is not a list of strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{meta_path}: corrupt BM25 index metadata: {exc}") from exc
        try:
            retriever = bm25s.BM25.load(directory, show_progress=show_progress)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{directory}: cannot load bm25s index files: {exc}") from exc
        num_docs = retriever.scores["num_docs"]
        params = (retriever.k1, retriever.b, retriever.method)
        if num_docs != len(docids) or params != (config.k1, config.b, config.method):
            raise ArtifactError(
                f"{directory}: bm25s index ({num_docs} docs, k1/b/method {params}) does not "
                f"match {META_FILE} ({len(docids)} docids, config {config.to_dict()})"
            )
        return cls(retriever, docids, config, n_threads=n_threads, show_progress=show_progress)
