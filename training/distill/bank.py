"""The frozen passage bank of query-tower training (``train_tower="query"``).

In query-tower mode the passage vectors stay those of the base student's Flat index (the
published index stays valid: a new query encoder can be swapped in without re-indexing); only
the query side trains. Every query is contrasted against the **whole** bank (one matrix product
per step: ``[queries, dim] x [dim, passages]``), and its sentence-level KD list (the annotated
candidates: the union of the mining sources' top-k, scored by the teacher once) is read off the
same product.

A query-tower student pairs with the passage encoder that built the bank; the model directory
records it in ``pairing.json`` (:mod:`retrieval.pairing`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retrieval.encoder import DualEncoder
from retrieval.index import IndexArtifact, read_manifest
from retrieval.metrics import DEFAULT_MEASURES, evaluate_run, subset
from retrieval.pairing import PAIRING_FILE, read_pairing  # noqa: F401  (PAIRING_FILE: re-exported)
from retrieval.pairing import write_pairing as _write_pairing
from retrieval.types import Qrels, Queries, Run

from ..data import TrainingRecord
from ..errors import TrainingError
from ..false_negatives import FilteredQuery
from .batches import Group
from .config import DEV_MEASURES

@dataclass
class PassageBank:
    """Every passage vector of an index, in row order: ``vectors [passages, dim]`` float32."""

    directory: Path
    docids: list[str]
    vectors: torch.Tensor  # [passages, dim]
    encoder_source: str
    encoder_fingerprint: str

    @classmethod
    def from_index(cls, directory: str | os.PathLike[str]) -> PassageBank:
        """Read the exact vectors of an index directory (a Flat index or stored ``vectors.f32``)."""
        index = IndexArtifact.open(Path(directory))
        try:
            if not index.has_vectors:
                raise TrainingError(f"{directory}: the index keeps no exact vectors; query-tower training needs a Flat index")
            matrix = index.all_vectors()
            return cls(Path(directory), list(index.docids), torch.from_numpy(np.ascontiguousarray(matrix)),
                       index.manifest.encoder.source, index.manifest.encoder.fingerprint)
        finally:
            index.close()

    def column(self) -> dict[str, int]:
        """docid -> row of :attr:`vectors`."""
        return {d: i for i, d in enumerate(self.docids)}

    def search(self, query_vectors: np.ndarray | torch.Tensor, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner-product top-``depth``: ``(scores [n, k], rows [n, k])``, best first."""
        q = torch.as_tensor(query_vectors, dtype=torch.float32)
        scores = q @ self.vectors.T  # [n, passages]
        top = torch.topk(scores, min(depth, scores.shape[1]), dim=1)
        return top.values.numpy(), top.indices.numpy()


def bank_run(encoder: DualEncoder, bank: PassageBank, queries: Queries, depth: int, batch_size: int = 64) -> Run:
    """A run of ``encoder``'s query vectors against the bank (exact search, as a Flat index)."""
    qids = list(queries)
    if not qids:
        return {}
    vectors = encoder.encode_queries([queries[q] for q in qids], batch_size)  # [n, dim]
    scores, rows = bank.search(vectors, depth)
    return {q: {bank.docids[r]: float(s) for s, r in zip(scores[i], rows[i])} for i, q in enumerate(qids)}


def evaluate_on(qrels: Qrels, run: Run, relevance_level: int, query_ids: Sequence[str] | None = None) -> dict[str, float] | None:
    """Dev measures (:data:`DEV_MEASURES`) of ``run`` on ``qrels`` or its ``query_ids`` subset (``None`` when empty)."""
    judged = qrels if query_ids is None else subset(qrels, query_ids)
    if not judged:
        return None
    return evaluate_run(judged, run, {name: DEFAULT_MEASURES[name] for name in DEV_MEASURES}, relevance_level)


@dataclass
class BankTargets:
    """Masks over the whole bank and the KD lists of one micro-batch of query-tower training."""

    positive_mask: torch.Tensor  # [queries, passages] the sampled positive of each query
    valid_mask: torch.Tensor  # [queries, passages] columns in the denominator
    kd_index: torch.Tensor  # [queries, candidates] bank rows of each query's KD list
    kd_teacher: torch.Tensor  # [queries, candidates]
    kd_mask: torch.Tensor  # [queries, candidates]


def bank_targets(
    groups: Sequence[Group],
    views: Mapping[str, FilteredQuery],
    column: Mapping[str, int],
    lists: Mapping[str, Sequence[tuple[str, float]]],
    passages: int,
) -> BankTargets:
    """Targets of a micro-batch against a bank of ``passages`` rows.

    For query ``i`` the sampled positive (``groups[i].positive``) is the InfoNCE positive; its
    other positives and its excluded passages (dropped suspected false negatives) leave the
    denominator; every other bank row is a negative. ``lists[query_id]`` is the query's KD list,
    ``(docid, teacher score)`` pairs (passages missing from the bank are skipped).
    """
    n_q = len(groups)
    positive = torch.zeros(n_q, passages, dtype=torch.bool)
    valid = torch.ones(n_q, passages, dtype=torch.bool)
    kd_rows: list[list[tuple[int, float]]] = []
    for i, g in enumerate(groups):
        view = views[g.query_id]
        for docid in (*view.positives, *view.excluded):
            if docid in column:
                valid[i, column[docid]] = False
        if g.positive not in column:
            raise TrainingError(f"query {g.query_id}: positive {g.positive} is not in the passage bank")
        positive[i, column[g.positive]] = True
        valid[i, column[g.positive]] = True
        kd_rows.append([(column[d], float(s)) for d, s in lists.get(g.query_id, ()) if d in column])
    width = max([len(r) for r in kd_rows] + [1])
    kd_index = torch.zeros(n_q, width, dtype=torch.long)
    kd_teacher = torch.zeros(n_q, width)
    kd_mask = torch.zeros(n_q, width, dtype=torch.bool)
    for i, row in enumerate(kd_rows):
        for k, (col, score) in enumerate(row):
            kd_index[i, k], kd_teacher[i, k], kd_mask[i, k] = col, score, True
    return BankTargets(positive, valid, kd_index, kd_teacher, kd_mask)


def kd_list(record: TrainingRecord, score: str = "teacher") -> list[tuple[str, float]]:
    """A record's sentence-KD list: ``(docid, score)`` of every annotated candidate, positives first;
    ``score`` is ``"teacher"`` (``teacher_score``: the fused score when the teacher has fitted
    weights) or ``"cross_encoder"`` (``cross_encoder_score``). Unscored candidates are left out."""
    attribute = "teacher_score" if score == "teacher" else "cross_encoder_score"
    return [(c.docid, float(getattr(c, attribute))) for c in record.candidates() if getattr(c, attribute) is not None]


class PairedRetriever:
    """A query encoder and an index built by another (its paired passage encoder): the two
    attributes :func:`training.mining.mine` reads (``encoder``, ``index``), for mining with a
    query-tower student. :class:`retrieval.retriever.Retriever` refuses such a pair on purpose
    (fingerprints differ); the pairing here is checked against the student's ``pairing.json`` instead."""

    def __init__(self, encoder: DualEncoder, index_dir: Path) -> None:
        pairing = read_pairing(encoder.model_dir)
        manifest = read_manifest(index_dir)
        if pairing is None or pairing["passage_encoder"]["fingerprint"] != manifest.encoder.fingerprint:
            raise TrainingError(f"{encoder.model_dir}: not a query-tower student paired with {index_dir}'s passage encoder")
        self.encoder = encoder
        self.index = IndexArtifact.open(index_dir)

    def close(self) -> None:
        self.index.close()


def write_pairing(model_dir: Path, bank: PassageBank, query_encoder_fingerprint: str) -> Path:
    """Write :data:`retrieval.pairing.PAIRING_FILE` into a saved query-tower student's directory."""
    return _write_pairing(model_dir, bank.encoder_source, bank.encoder_fingerprint, str(bank.directory), query_encoder_fingerprint)
