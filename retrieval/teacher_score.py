"""The teacher score the student distils from: the cross-encoder's score, alone or fused.

:class:`TeacherFusion` (saved in a cross-encoder's config as ``fusion`` once its weights were
fitted) says how the cross-encoder's score combines with first-stage scores; :func:`teacher_scores`
computes the score of one query's candidates; :func:`exact_bm25_scores` and
:func:`exact_dense_scores` give the first-stage sides exactly for any candidate list (through
:meth:`BM25Index.exact_scores` and :meth:`IndexArtifact.inner_products`). Re-exported by
:mod:`retrieval.cross_encoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InvalidValueError
from .fusion import FusionConfig, fuse

if TYPE_CHECKING:
    from .bm25 import BM25Index
    from .retriever import Retriever


class TeacherFusion(BaseModel):
    """How the teacher's score combines the cross-encoder with first-stage scores (all z-score fusion).

    Per query, over its candidate list: ``first_stage = fuse(dense, bm25)`` with
    ``dense_weight`` / ``bm25_weight``, then ``teacher = fuse(cross_encoder, first_stage)`` with
    ``cross_encoder_weight`` / ``first_stage_weight`` (see :func:`teacher_scores`). The weights are
    fitted on held-out training queries (``fitted_on``), never on test. ``dense_encoder`` is the
    fingerprint of the dual encoder whose cosine is the dense score (the base student), so the
    teacher stays the same model while the student changes.
    """

    model_config = ConfigDict(extra="forbid")

    cross_encoder_weight: float = Field(1.0, ge=0, le=10)
    first_stage_weight: float = Field(1.0, ge=0, le=10)
    dense_weight: float = Field(1.0, ge=0, le=10)
    bm25_weight: float = Field(1.0, ge=0, le=10)
    dense_encoder: str = Field("", description="source of the dual encoder giving the dense score")
    dense_encoder_fingerprint: str = ""
    bm25: dict[str, Any] = Field(default_factory=dict, description="BM25Config.to_dict() of the BM25 score")
    fitted_on: str = Field("", description="dataset and split the weights were fitted on")
    objective: dict[str, float] = Field(default_factory=dict, description="dev metrics at the chosen weights")

    @model_validator(mode="after")
    def _not_all_zero(self) -> TeacherFusion:
        if self.dense_weight == 0 and self.bm25_weight == 0:
            raise ValueError("dense_weight and bm25_weight cannot both be 0")
        if self.cross_encoder_weight == 0 and self.first_stage_weight == 0:
            raise ValueError("cross_encoder_weight and first_stage_weight cannot both be 0")
        return self


def teacher_scores(
    docids: Sequence[str],
    cross_encoder: Sequence[float] | np.ndarray,
    bm25: Sequence[float | None] | None = None,
    dense: Sequence[float | None] | None = None,
    fusion: TeacherFusion | None = None,
) -> np.ndarray:
    """The teacher's score of each candidate of ONE query, as the student sees it: ``[n]`` float64.

    Without ``fusion`` it is the cross-encoder's raw score. With ``fusion`` (the fitted weights
    in the teacher's config) it is z-score fusion by :func:`retrieval.fusion.fuse`, in two steps
    over this candidate list: ``first = fuse(dense, bm25; dense_weight, bm25_weight)`` and then
    ``fuse(cross_encoder, first; cross_encoder_weight, first_stage_weight)``. A ``None``
    first-stage score (the source did not score that candidate) takes that source's lowest
    score among the candidates, as everywhere in fusion. Because z-scores are per list, fused
    scores depend on the candidate list: score a query's whole list at once.
    """
    ce = np.asarray(cross_encoder, dtype=np.float64)
    if len(ce) != len(docids):
        raise ValueError(f"{len(ce)} cross-encoder scores for {len(docids)} candidates")
    if fusion is None or len(docids) == 0:
        return ce
    if len(set(docids)) != len(docids):
        raise ValueError("candidate docids must be unique")
    n = len(docids)
    if n > 1000:
        raise InvalidValueError(f"fused teacher scores take at most 1000 candidates per query, got {n}")
    sides = []
    for scores, name in ((dense, "dense"), (bm25, "bm25")):
        values = [None] * n if scores is None else list(scores)
        if len(values) != n:
            raise ValueError(f"{len(values)} {name} scores for {n} candidates")
        sides.append([(d, float(s)) for d, s in zip(docids, values) if s is not None])
    first_stage = FusionConfig(
        dense_weight=fusion.dense_weight, bm25_weight=fusion.bm25_weight, dense_depth=n, bm25_depth=n
    )
    first = [(h.docid, h.score) for h in fuse(_best_first(sides[0]), _best_first(sides[1]), first_stage, n)]
    final = FusionConfig(
        dense_weight=fusion.cross_encoder_weight, bm25_weight=fusion.first_stage_weight, dense_depth=n, bm25_depth=n
    )
    # fuse()'s "dense" side carries the cross-encoder here, its "bm25" side the first-stage fusion
    fused = {h.docid: h.score for h in fuse(_best_first(list(zip(docids, ce.tolist()))), first, final, n)}
    return np.array([fused[d] for d in docids], dtype=np.float64)


def _best_first(hits: list[tuple[str, float]]) -> list[tuple[str, float]]:
    return sorted(hits, key=lambda hit: (-hit[1], hit[0]))


# ------------------------------------------------------------- first-stage scores for the fusion
def exact_bm25_scores(index: BM25Index, query: str, docids: Sequence[str]) -> list[float]:
    """The BM25 side of :func:`teacher_scores`: :meth:`BM25Index.exact_scores` of ``docids``."""
    return index.exact_scores(query, docids)


def exact_dense_scores(retriever: Retriever, query_vector: np.ndarray, docids: Sequence[str]) -> list[float | None]:
    """The dense side of :func:`teacher_scores`: inner products of one query vector ``[dim]`` with
    the indexed vectors of ``docids`` (:meth:`IndexArtifact.inner_products`; ``None`` for a
    docid not in the index; an index family without exact vectors raises ArtifactError)."""
    return retriever.index.inner_products(query_vector, docids)
