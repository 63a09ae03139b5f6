"""Batch planning: the training view of each query, the micro-batches of an epoch (a pure
function of the seed, the iteration and the epoch), their masks and teacher targets, and the
word-level inputs (teacher attention aligned onto the student's tokens)."""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..alignment import align_attention
from ..data import TrainingRecord
from ..false_negatives import FilteredQuery, FilterResult, apply_filter
from ..losses import WordInputs
from .config import DistillConfig


# ------------------------------------------------------------------------------ batches
@dataclass(frozen=True)
class Group:
    """One query of a micro-batch: its positive, then its hard negatives (docids)."""

    query_id: str
    query: str
    positive: str
    negatives: tuple[str, ...]

    @property
    def docids(self) -> tuple[str, ...]:
        return (self.positive, *self.negatives)



def training_queries(records: Sequence[TrainingRecord], result: FilterResult, negative_depth: int) -> list[FilteredQuery]:
    """The filtered training view of every record that can train (a positive and some negative).

    Negatives are restricted to candidates ranked within ``negative_depth`` by some source.
    """
    out = []
    for record in records:
        view = apply_filter(record, result.flagged.get(record.query_id, ()), result.action)
        ranks = {c.docid: c.best_rank for c in record.negatives}
        pool = tuple(d for d in view.negatives if ranks.get(d) is not None and ranks[d] <= negative_depth)
        if view.positives:
            out.append(replace(view, negatives=pool))
    return out


def plan_epoch(queries: Sequence[FilteredQuery], config: DistillConfig, iteration: int, epoch: int) -> list[list[Group]]:
    """The micro-batches of one epoch, in order: a pure function of the queries, the seed, the
    iteration and the epoch (so a resumed run replays the same batches).

    Each query appears once, with a positive drawn from its positives and ``negatives``
    negatives drawn without replacement (with replacement when it has fewer; a query with none
    trains on in-batch negatives only).
    """
    rng = random.Random(f"md2pr-distill:{config.seed}:{iteration}:{epoch}")
    order = list(range(len(queries)))
    rng.shuffle(order)
    groups = []
    for i in order:
        q = queries[i]
        positive = rng.choice(q.positives)
        if config.negatives == 0 or not q.negatives:
            chosen: list[str] = []
        elif len(q.negatives) >= config.negatives:
            chosen = rng.sample(list(q.negatives), config.negatives)
        else:
            chosen = [rng.choice(q.negatives) for _ in range(config.negatives)]
        groups.append(Group(q.query_id, q.query, positive, tuple(chosen)))
    size = config.queries_per_batch
    return [groups[i : i + size] for i in range(0, len(groups), size)]


@dataclass
class BatchTargets:
    """Masks and teacher scores of one micro-batch (see :class:`training.losses.MD2PRLoss`)."""

    columns: list[str]  # docid of each passage column, group after group
    positive_mask: torch.Tensor  # [queries, columns]
    valid_mask: torch.Tensor  # [queries, columns]
    kd_index: torch.Tensor  # [queries, candidates]
    kd_teacher: torch.Tensor  # [queries, candidates]
    kd_mask: torch.Tensor  # [queries, candidates]
    word_pairs: list[tuple[int, int]]  # (query row, passage column) with a cached teacher attention


def step_schedule(queries: Sequence[FilteredQuery], config: DistillConfig, iteration: int) -> tuple[int, int, int]:
    """``(micro-batches a epoch, micro-batches in all, optimizer steps)`` of an iteration's training:
    ``accumulation_steps`` micro-batches a step, over ``epochs`` epochs, at most ``max_steps`` steps."""
    batches_per_epoch = len(plan_epoch(queries, config, iteration, 0))
    total_micro = batches_per_epoch * config.epochs
    total_steps = math.ceil(total_micro / config.accumulation_steps)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    return batches_per_epoch, total_micro, total_steps


def batch_targets(
    groups: Sequence[Group],
    views: dict[str, FilteredQuery],
    teacher: dict[tuple[str, str], float],
    attention_keys: Collection[tuple[str, str]],
    online_teacher: Any = None,
    passages: dict[str, str] | None = None,
) -> BatchTargets:
    """Build the masks of a micro-batch.

    Column ``j`` is a positive of query ``i`` when it is one of ``i``'s positives (its own
    group's first passage, or the same passage in another group); it is excluded for ``i`` when
    it is one of ``i``'s dropped suspected false negatives. Sentence-level KD runs over each
    query's own group (teacher scores from annotation), or over every valid column with
    ``online_teacher`` (a :class:`CrossEncoder` scoring the pairs annotation did not cover).
    """
    columns = [d for g in groups for d in g.docids]
    n_q, n_c = len(groups), len(columns)
    positive = torch.zeros(n_q, n_c, dtype=torch.bool)
    valid = torch.ones(n_q, n_c, dtype=torch.bool)
    for i, g in enumerate(groups):
        view = views[g.query_id]
        for j, docid in enumerate(columns):
            positive[i, j] = docid in view.positives
            valid[i, j] = docid not in view.excluded
    starts = np.cumsum([0] + [len(g.docids) for g in groups])
    word_pairs = [
        (i, int(starts[i]) + k) for i, g in enumerate(groups) for k, d in enumerate(g.docids) if (g.query_id, d) in attention_keys
    ]
    if online_teacher is None:
        width = max(len(g.docids) for g in groups)
        kd_index = torch.zeros(n_q, width, dtype=torch.long)
        kd_teacher = torch.zeros(n_q, width)
        kd_mask = torch.zeros(n_q, width, dtype=torch.bool)
        for i, g in enumerate(groups):
            for k, docid in enumerate(g.docids):
                score = teacher.get((g.query_id, docid))  # None only in a run without a teacher
                kd_index[i, k] = int(starts[i]) + k
                kd_teacher[i, k] = 0.0 if score is None else score
                kd_mask[i, k] = score is not None
        return BatchTargets(columns, positive, valid, kd_index, kd_teacher, kd_mask, word_pairs)
    missing = sorted({(g.query_id, d) for i, g in enumerate(groups) for j, d in enumerate(columns)
                      if valid[i, j] and (g.query_id, d) not in teacher})
    if missing:
        assert passages is not None
        queries = {g.query_id: g.query for g in groups}
        scores = online_teacher.score([queries[q] for q, _ in missing], [passages[d] for _, d in missing])
        teacher = {**teacher, **{key: float(s) for key, s in zip(missing, scores.tolist())}}
    kd_index = torch.arange(n_c).repeat(n_q, 1)
    kd_teacher = torch.tensor([[teacher.get((g.query_id, d), 0.0) for d in columns] for g in groups], dtype=torch.float32)
    return BatchTargets(columns, positive, valid, kd_index, kd_teacher, valid.clone(), word_pairs)


def word_inputs(
    pairs: Sequence[tuple[int, int]],
    groups: Sequence[Group],
    columns: Sequence[str],
    attention: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
    query_offsets: torch.Tensor,
    passage_offsets: torch.Tensor,
    query_states: torch.Tensor,
    passage_states: torch.Tensor,
) -> WordInputs | None:
    """Aligned teacher attention for the pairs of a micro-batch, on the student's token grid.

    ``query_offsets [queries, q_len, 2]`` / ``passage_offsets [columns, p_len, 2]`` are the
    student tokenizer's spans (``(0, 0)`` for special tokens and padding, which therefore
    align with nothing and are masked).
    """
    if not pairs:
        return None
    q_len, p_len = query_offsets.shape[1], passage_offsets.shape[1]
    target = np.zeros((len(pairs), q_len, p_len), dtype=np.float32)
    q_mask = np.zeros((len(pairs), q_len), dtype=bool)
    p_mask = np.zeros((len(pairs), p_len), dtype=bool)
    q_off, p_off = query_offsets.cpu().numpy(), passage_offsets.cpu().numpy()
    for n, (i, j) in enumerate(pairs):
        matrix, tq, tp = attention[(groups[i].query_id, columns[j])]
        aligned = align_attention(matrix, tq, tp, q_off[i], p_off[j])
        target[n], q_mask[n], p_mask[n] = aligned.target, aligned.query_mask, aligned.passage_mask
    rows = torch.tensor([i for i, _ in pairs])
    cols = torch.tensor([j for _, j in pairs])
    device = query_states.device
    return WordInputs(
        query_states=query_states[rows.to(device)],
        passage_states=passage_states[cols.to(device)],
        target=torch.from_numpy(target).to(device),
        query_mask=torch.from_numpy(q_mask).to(device),
        passage_mask=torch.from_numpy(p_mask).to(device),
    )


