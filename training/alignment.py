"""Token alignment between the teacher's and the student's tokenizers by character offsets.

Word-level distillation compares the teacher's query->passage attention (a matrix over the
*teacher's* tokens) with the student's token-similarity matrix (over the *student's* tokens).
The two tokenizers may split words differently (``"homocysteine"`` -> ``homo ##cy ##steine``
for one, ``homocysteine`` for the other), so the teacher's matrix is carried onto the student's
token grid through the characters each token covers. Everything here is pure numpy on offsets;
nothing depends on a model.

Offsets are ``[n_tokens, 2]`` integer ``(start, end)`` character spans in the same text (the
query or the passage, as both models read it); a span with ``end <= start`` (special tokens,
padding, ``(0, 0)``) covers no character and is never aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A teacher row whose mass on the covered passage tokens is below this is treated as empty.
_EMPTY_ROW = 1e-12


def overlap_matrix(student_offsets: np.ndarray, teacher_offsets: np.ndarray) -> np.ndarray:
    """Characters shared by each (student token, teacher token): ``[n_student, n_teacher]`` float64.

    Zero-length spans (special tokens, padding) overlap nothing.
    """
    s = np.asarray(student_offsets, dtype=np.int64).reshape(-1, 2)
    t = np.asarray(teacher_offsets, dtype=np.int64).reshape(-1, 2)
    start = np.maximum(s[:, None, 0], t[None, :, 0])  # [n_s, n_t]
    end = np.minimum(s[:, None, 1], t[None, :, 1])  # [n_s, n_t]
    return np.clip(end - start, 0, None).astype(np.float64)


@dataclass(frozen=True)
class AlignedAttention:
    """The teacher's attention carried onto the student's tokens.

    ``target``: ``[n_student_query, n_student_passage]`` float32; each row with
    ``query_mask`` true is a probability distribution over the passage tokens with
    ``passage_mask`` true (zero elsewhere); other rows are all zero.
    ``query_mask``: ``[n_student_query]`` bool, student query tokens that carry a target row
    (a real token sharing characters with some teacher query token that attends somewhere).
    ``passage_mask``: ``[n_student_passage]`` bool, student passage tokens that share characters
    with a teacher passage token, i.e. the passage part the teacher read (it may truncate more
    than the student); the student's distribution is taken over these tokens only.
    """

    target: np.ndarray
    query_mask: np.ndarray
    passage_mask: np.ndarray


def align_attention(
    teacher_attention: np.ndarray,
    teacher_query_offsets: np.ndarray,
    teacher_passage_offsets: np.ndarray,
    student_query_offsets: np.ndarray,
    student_passage_offsets: np.ndarray,
) -> AlignedAttention:
    """Carry a teacher query->passage attention matrix onto the student's tokens.

    ``teacher_attention`` is ``[n_teacher_query, n_teacher_passage]`` (rows need not be
    normalised: the teacher's attention also went to query and special tokens). Each student
    query token takes the character-weighted *average* of the rows of the teacher query tokens
    it overlaps (a student token inside one teacher word gets that word's row); each teacher
    passage token's attention mass is *split* among the student passage tokens that overlap it,
    in proportion to the shared characters (so mass is neither created nor lost). The result is
    row-normalised over the covered student passage tokens. A student query token that
    overlaps no teacher token (a special token, padding, or text the teacher truncated) gets
    an all-zero row and ``query_mask`` false.
    """
    attention = np.asarray(teacher_attention, dtype=np.float64)
    n_tq, n_tp = len(np.asarray(teacher_query_offsets).reshape(-1, 2)), len(np.asarray(teacher_passage_offsets).reshape(-1, 2))
    if attention.shape != (n_tq, n_tp):
        raise ValueError(f"teacher attention {attention.shape} for {n_tq} query and {n_tp} passage offsets")
    q_overlap = overlap_matrix(student_query_offsets, teacher_query_offsets)  # [n_sq, n_tq]
    p_overlap = overlap_matrix(student_passage_offsets, teacher_passage_offsets)  # [n_sp, n_tp]
    # query side: average the teacher rows a student token overlaps (weights sum to 1 per student token)
    q_weight = q_overlap / np.maximum(q_overlap.sum(axis=1, keepdims=True), 1.0)  # [n_sq, n_tq]
    # passage side: split each teacher token's mass among the student tokens covering it
    p_split = p_overlap / np.maximum(p_overlap.sum(axis=0, keepdims=True), 1.0)  # [n_sp, n_tp]
    carried = q_weight @ attention @ p_split.T  # [n_sq, n_sp]
    passage_mask = p_overlap.sum(axis=1) > 0  # [n_sp]
    carried[:, ~passage_mask] = 0.0
    row_mass = carried.sum(axis=1)  # [n_sq]
    query_mask = (q_overlap.sum(axis=1) > 0) & (row_mass > _EMPTY_ROW)
    target = np.zeros_like(carried)
    target[query_mask] = carried[query_mask] / row_mass[query_mask, None]
    return AlignedAttention(target.astype(np.float32), query_mask, passage_mask)
