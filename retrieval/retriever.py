"""Retrieval over one index version: dense (the dual encoder and FAISS), BM25 (the lexical
side index, when the version has one) and hybrid (both, fused by :mod:`retrieval.fusion`).

The service, evaluation and benchmarks all search through :class:`Retriever`, so a mode
means the same thing everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from .bm25 import BM25Index
from .encoder import DualEncoder
from .errors import ArtifactMismatchError, InvalidValueError
from .fusion import FusionConfig, fuse
from .index import IndexArtifact
from .index_versions import resolve_index_dir
from .pairing import check_pairing
from .types import Queries, Run

Mode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[Mode, ...] = get_args(Mode)


class UnsupportedModeError(InvalidValueError):
    """A search mode the loaded index version cannot answer (e.g. ``bm25`` without a lexical index)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``rank`` is 1-based.

    ``score`` is the ranking score of the mode: the inner product (dense), the BM25 score
    (bm25) or the fused score (hybrid, see :mod:`retrieval.fusion`). ``dense_score`` and
    ``bm25_score`` are the components where the mode computed them (``None`` otherwise, and
    in hybrid mode for a side that did not return the passage).
    """

    docid: str
    score: float
    rank: int
    title: str | None = None
    text: str | None = None
    dense_score: float | None = None
    bm25_score: float | None = None


class Retriever:
    """Searches one index version; refuses an index built by another encoder."""

    def __init__(
        self,
        encoder: DualEncoder,
        index: IndexArtifact,
        bm25: BM25Index | None = None,
        fusion: FusionConfig | None = None,
    ) -> None:
        expected = index.manifest.encoder.fingerprint
        paired = index.manifest.query_encoder
        if paired is not None:
            # A query-tower student over another encoder's passage vectors: the version names it, and
            # the student's own pairing.json must name the passage encoder of these vectors.
            if encoder.fingerprint != paired.fingerprint:
                raise ArtifactMismatchError(
                    f"index {index.directory} answers queries with encoder {paired.fingerprint[:12]} ({paired.source}); "
                    f"the loaded encoder is {encoder.fingerprint[:12]} ({encoder.source})"
                )
            check_pairing(encoder.model_dir, encoder.fingerprint, expected, f"index {index.directory}")
        elif encoder.fingerprint != expected:
            raise ArtifactMismatchError(
                f"index {index.directory} was built by encoder {expected[:12]} "
                f"({index.manifest.encoder.source}); the loaded encoder is {encoder.fingerprint[:12]} ({encoder.source})"
            )
        if bm25 is not None and len(bm25) != index.manifest.count:
            raise ArtifactMismatchError(
                f"index {index.directory}: lexical index holds {len(bm25)} passages, the dense index {index.manifest.count}"
            )
        self.encoder = encoder
        self.index = index
        self.bm25 = bm25
        #: Fusion defaults of this version (the manifest's, else :class:`FusionConfig`'s).
        self.fusion = fusion or FusionConfig()

    @classmethod
    def open(
        cls,
        index_path: str | os.PathLike[str],
        encoder_path: str | os.PathLike[str] | None = None,
        reuse_encoder: DualEncoder | Sequence[DualEncoder] | None = None,
        backend: str = "torch",
        threads: int | None = None,
    ) -> "Retriever":
        """Open an index root or directory, the encoder its manifest names and its lexical index.

        The query encoder is the manifest's ``query_encoder`` when the version names one (a
        query-tower student paired with these passage vectors), else its ``encoder``.

        ``backend`` runs the query encoder (:mod:`retrieval.backends`; an ONNX backend needs
        an export of the encoder with a passing parity record, else
        :class:`~retrieval.backends.BackendError`); ``threads`` are its ONNX Runtime threads
        (default: torch's count). The vectors in the index may come from another backend: the
        parity check measured the query side over torch-built vectors too.

        ``encoder_path`` overrides only *where* the encoder is loaded from (e.g. inside a
        container); its fingerprint must still match the manifest. ``reuse_encoder`` is an
        encoder (or several) already in memory (say, the one serving the previous index
        version): the first whose fingerprint is the one the manifest names is used as is,
        instead of loading the same model again (on the same backend).
        """
        index = IndexArtifact.open(resolve_index_dir(Path(index_path)))
        try:
            ref = index.manifest.query_encoder or index.manifest.encoder
            candidates = [reuse_encoder] if isinstance(reuse_encoder, DualEncoder) else list(reuse_encoder or ())
            reusable = [
                e for e in candidates if e.fingerprint == ref.fingerprint and backend in ("auto", e.backend.name)
            ]
            if reusable:
                encoder = reusable[0]
            else:
                encoder = DualEncoder.from_pretrained(encoder_path or ref.source, backend=backend, threads=threads)
            lexical = index.manifest.lexical
            bm25 = BM25Index.load(index.directory / lexical.directory) if lexical else None
            fusion = FusionConfig.from_dict(index.manifest.fusion) if index.manifest.fusion else None
            return cls(encoder, index, bm25, fusion)
        except Exception:
            index.close()
            raise

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The search modes this version supports."""
        return MODES if self.bm25 is not None else ("dense",)

    def check_mode(self, mode: str) -> Mode:
        """``mode`` if this version supports it, else :class:`UnsupportedModeError`."""
        if mode not in MODES:
            raise UnsupportedModeError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise UnsupportedModeError(
                f"mode {mode!r} needs a lexical (BM25) index, which index version {self.index.directory.name} "
                f"does not have; supported: {', '.join(self.modes)}"
            )
        return mode  # type: ignore[return-value]

    def search(
        self,
        queries: Sequence[str],
        top_k: int = 10,
        return_text: bool = False,
        search_params: Mapping[str, int] | None = None,
        mode: Mode = "dense",
        fusion: FusionConfig | None = None,
    ) -> list[list[Hit]]:
        """Ranked hits for each query (at most ``top_k``, fewer for a small corpus).

        ``search_params`` are search-time parameters of the index family (``nprobe``,
        ``efSearch``); ``None`` uses the index's defaults. ``fusion`` (hybrid only) overrides
        this version's fusion defaults.
        """
        if not queries:
            return []
        vectors = self.encoder.encode_queries(queries) if mode != "bm25" else None  # [n, dim]
        return self.search_encoded(queries, vectors, top_k, return_text, search_params, mode, fusion)

    def search_vectors(
        self,
        vectors: np.ndarray,
        top_k: int,
        return_text: bool | Sequence[bool] = False,
        search_params: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Dense search for query vectors ``[n, dim]`` already encoded.

        ``return_text`` may also be one flag per query: passage text is then read only for
        the queries that asked for it (a micro-batch mixes both kinds of request).
        """
        scores, rows = self.index.search(vectors, top_k, search_params)  # [n, k] each
        ranked = [
            [(row, float(s), float(s), None) for s, row in zip(srow.tolist(), irow.tolist()) if row >= 0]
            for srow, irow in zip(scores, rows)
        ]
        return self._hits(ranked, return_text)

    def search_encoded(
        self,
        queries: Sequence[str],
        vectors: np.ndarray | None,
        top_k: int,
        return_text: bool | Sequence[bool] = False,
        search_params: Mapping[str, int] | None = None,
        mode: Mode = "dense",
        fusion: FusionConfig | None = None,
    ) -> list[list[Hit]]:
        """Search in ``mode`` with query vectors ``[n, dim]`` already encoded (``None`` for bm25)."""
        mode = self.check_mode(mode)
        if mode == "dense":
            assert vectors is not None
            return self.search_vectors(vectors, top_k, return_text, search_params)
        assert self.bm25 is not None
        row_of = self.index.row_of
        if mode == "bm25":
            ranked = [
                [(row_of[d], s, None, s) for d, s in hits] for hits in self.bm25.search(list(queries), top_k)
            ]
            return self._hits(ranked, return_text)
        assert vectors is not None
        config = fusion or self.fusion
        scores, rows = self.index.search(vectors, config.dense_depth, search_params)  # [n, dense_depth]
        lexical = self.bm25.search(list(queries), config.bm25_depth)
        ranked = []
        for srow, irow, bm25_hits in zip(scores, rows, lexical):
            dense_hits = [(self.index.docids[r], float(s)) for s, r in zip(srow.tolist(), irow.tolist()) if r >= 0]
            fused = fuse(dense_hits, bm25_hits, config, top_k)
            ranked.append([(row_of[h.docid], h.score, h.dense_score, h.bm25_score) for h in fused])
        return self._hits(ranked, return_text)

    def search_run(self, queries: Queries, top_k: int, batch_size: int = 64, mode: Mode = "dense") -> Run:
        """Search every query of a dataset; returns a :data:`Run` for evaluation."""
        ids = list(queries)
        texts = [queries[q] for q in ids]
        vectors = self.encoder.encode_queries(texts, batch_size=batch_size) if mode != "bm25" else None
        hits = self.search_encoded(texts, vectors, top_k, mode=mode)
        return {qid: {h.docid: h.score for h in query_hits} for qid, query_hits in zip(ids, hits)}

    def close(self) -> None:
        self.index.close()

    # ------------------------------------------------------------------------------ internals
    def _hits(
        self,
        ranked: list[list[tuple[int, float, float | None, float | None]]],
        return_text: bool | Sequence[bool],
    ) -> list[list[Hit]]:
        """Turn ``(row, score, dense_score, bm25_score)`` lists into hits, reading text where asked."""
        flags = [return_text] * len(ranked) if isinstance(return_text, bool) else list(return_text)
        wanted = [row for hits, flag in zip(ranked, flags) if flag for row, *_ in hits]
        passages = self.index.store.get_rows(wanted) if wanted else {}
        results: list[list[Hit]] = []
        for hits, flag in zip(ranked, flags):
            out = []
            for rank, (row, score, dense, lexical) in enumerate(hits, start=1):
                passage = passages.get(row) if flag else None
                out.append(
                    Hit(
                        docid=self.index.docids[row],
                        score=score,
                        rank=rank,
                        title=passage.title if passage else None,
                        text=passage.text if passage else None,
                        dense_score=dense,
                        bm25_score=lexical,
                    )
                )
            results.append(out)
        return results
