"""Dense retrieval: a dual encoder and an index artifact that it built."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoder import DualEncoder
from .errors import ArtifactMismatchError
from .index import IndexArtifact
from .index_versions import resolve_index_dir
from .types import Queries, Run


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``rank`` is 1-based; ``score`` is the index metric (inner product)."""

    docid: str
    score: float
    rank: int
    title: str | None = None
    text: str | None = None


class Retriever:
    """Encodes queries and searches one index; refuses an index built by another encoder."""

    def __init__(self, encoder: DualEncoder, index: IndexArtifact) -> None:
        expected = index.manifest.encoder.fingerprint
        if encoder.fingerprint != expected:
            raise ArtifactMismatchError(
                f"index {index.directory} was built by encoder {expected[:12]} "
                f"({index.manifest.encoder.source}); the loaded encoder is {encoder.fingerprint[:12]} ({encoder.source})"
            )
        self.encoder = encoder
        self.index = index

    @classmethod
    def open(
        cls,
        index_path: str | os.PathLike[str],
        encoder_path: str | os.PathLike[str] | None = None,
        reuse_encoder: DualEncoder | None = None,
    ) -> "Retriever":
        """Open an index root or directory and the encoder its manifest names.

        ``encoder_path`` overrides only *where* the encoder is loaded from (e.g. inside a
        container); its fingerprint must still match the manifest. ``reuse_encoder`` is an
        encoder already in memory (say, the one serving the previous index version): it is
        used as is when its fingerprint is the one the manifest names, instead of loading
        the same model again.
        """
        index = IndexArtifact.open(resolve_index_dir(Path(index_path)))
        try:
            if reuse_encoder is not None and reuse_encoder.fingerprint == index.manifest.encoder.fingerprint:
                encoder = reuse_encoder
            else:
                encoder = DualEncoder.from_pretrained(encoder_path or index.manifest.encoder.source)
            return cls(encoder, index)
        except Exception:
            index.close()
            raise

    def search(
        self,
        queries: Sequence[str],
        top_k: int = 10,
        return_text: bool = False,
        search_params: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Ranked hits for each query (at most ``top_k``, fewer for a small corpus).

        ``search_params`` are search-time parameters of the index family (``nprobe``,
        ``efSearch``); ``None`` uses the index's defaults.
        """
        if not queries:
            return []
        vectors = self.encoder.encode_queries(queries)  # [n, dim]
        return self.search_vectors(vectors, top_k, return_text, search_params)

    def search_vectors(
        self,
        vectors: np.ndarray,
        top_k: int,
        return_text: bool | Sequence[bool] = False,
        search_params: Mapping[str, int] | None = None,
    ) -> list[list[Hit]]:
        """Like :meth:`search` for query vectors ``[n, dim]`` already encoded.

        ``return_text`` may also be one flag per query: passage text is then read only for
        the queries that asked for it (a micro-batch mixes both kinds of request).
        """
        scores, rows = self.index.search(vectors, top_k, search_params)  # [n, k] each
        if isinstance(return_text, bool):
            text_flags = np.full(len(rows), return_text, dtype=bool)  # [n]
        else:
            text_flags = np.asarray(return_text, dtype=bool)  # [n]
        wanted = rows[text_flags]
        passages = self.index.store.get_rows(wanted[wanted >= 0].ravel()) if wanted.size else {}
        results: list[list[Hit]] = []
        for score_row, id_row, with_text in zip(scores, rows, text_flags.tolist()):
            hits = []
            for score, row in zip(score_row.tolist(), id_row.tolist()):
                if row < 0:
                    continue
                passage = passages.get(row) if with_text else None
                hits.append(
                    Hit(
                        docid=self.index.docids[row],
                        score=float(score),
                        rank=len(hits) + 1,
                        title=passage.title if passage else None,
                        text=passage.text if passage else None,
                    )
                )
            results.append(hits)
        return results

    def search_run(self, queries: Queries, top_k: int, batch_size: int = 64) -> Run:
        """Search every query of a dataset; returns a :data:`Run` for evaluation."""
        ids = list(queries)
        vectors = self.encoder.encode_queries([queries[q] for q in ids], batch_size=batch_size)
        hits = self.search_vectors(vectors, top_k)
        return {qid: {h.docid: h.score for h in query_hits} for qid, query_hits in zip(ids, hits)}

    def close(self) -> None:
        self.index.close()
