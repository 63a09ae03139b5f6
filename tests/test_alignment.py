"""Character-offset alignment of teacher and student tokens (training/alignment.py)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import BertTokenizer

from training.alignment import align_attention, overlap_matrix

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(words: list[str]) -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(SPECIAL + words)}, do_lower_case=True)


# The teacher splits "homocysteine" into three pieces; the student knows it as one word, but
# splits "vitamin" into two pieces the teacher keeps whole.
TEACHER = _tokenizer(["high", "homo", "##cy", "##steine", "levels", "vitamin", "b12", "lowers", "them"])
STUDENT = _tokenizer(["high", "homocysteine", "levels", "vita", "##min", "b12", "lowers", "them"])


def _offsets(tokenizer: BertTokenizer, text: str, drop_special: bool) -> tuple[list[str], np.ndarray]:
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    keep = [i for i, s in enumerate(enc["special_tokens_mask"]) if not (drop_special and s)]
    return [tokens[i] for i in keep], np.array([enc["offset_mapping"][i] for i in keep])


def test_overlap_counts_shared_characters_and_ignores_empty_spans() -> None:
    student = np.array([[0, 0], [0, 4], [5, 17], [0, 0]])  # [CLS] high homocysteine [PAD]
    teacher = np.array([[0, 4], [5, 9], [9, 11], [11, 17]])  # high homo ##cy ##steine
    expected = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 2, 6], [0, 0, 0, 0]])
    np.testing.assert_array_equal(overlap_matrix(student, teacher), expected)


def test_tokenizers_that_split_words_differently_are_aligned() -> None:
    query, passage = "High homocysteine levels", "Vitamin B12 lowers them"
    tq_tokens, tq = _offsets(TEACHER, query, drop_special=True)
    tp_tokens, tp = _offsets(TEACHER, passage, drop_special=True)
    sq_tokens, sq = _offsets(STUDENT, query, drop_special=False)  # with [CLS]/[SEP], as the student's batch has
    sp_tokens, sp = _offsets(STUDENT, passage, drop_special=False)
    assert tq_tokens == ["high", "homo", "##cy", "##steine", "levels"]
    assert sq_tokens == ["[CLS]", "high", "homocysteine", "levels", "[SEP]"]
    assert tp_tokens == ["vitamin", "b12", "lowers", "them"]
    assert sp_tokens == ["[CLS]", "vita", "##min", "b12", "lowers", "them", "[SEP]"]

    # teacher rows: each query token attends to one passage token (plus mass elsewhere, rows sum < 1)
    attention = np.array(
        [
            [0.4, 0.0, 0.0, 0.0],  # high -> vitamin
            [0.0, 0.3, 0.0, 0.0],  # homo -> b12
            [0.0, 0.0, 0.3, 0.0],  # ##cy -> lowers
            [0.0, 0.0, 0.0, 0.6],  # ##steine -> them
            [0.1, 0.1, 0.0, 0.0],  # levels -> vitamin, b12
        ]
    )
    aligned = align_attention(attention, tq, tp, sq, sp)
    assert aligned.target.shape == (5, 7)
    np.testing.assert_array_equal(aligned.query_mask, [False, True, True, True, False])  # specials masked
    np.testing.assert_array_equal(aligned.passage_mask, [False, True, True, True, True, True, False])
    target = aligned.target
    # "high": all its mass on "vitamin", which the student splits into vita (4 chars) + ##min (3 chars)
    np.testing.assert_allclose(target[1], [0, 4 / 7, 3 / 7, 0, 0, 0, 0], atol=1e-6)
    # "homocysteine" averages its three teacher pieces by characters (4, 2, 6 of 12), then normalises
    row = np.array([0, 0, 0, 4 / 12 * 0.3, 2 / 12 * 0.3, 6 / 12 * 0.6, 0])
    np.testing.assert_allclose(target[2], row / row.sum(), atol=1e-6)
    np.testing.assert_allclose(target[3], [0, 0.5 * 4 / 7, 0.5 * 3 / 7, 0.5, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(target[aligned.query_mask].sum(axis=1), 1.0, atol=1e-6)
    assert np.all(target[~aligned.query_mask] == 0) and np.all(target[:, ~aligned.passage_mask] == 0)


def test_same_tokenizer_is_the_identity_up_to_normalisation() -> None:
    text_q, text_p = "high homocysteine levels", "vitamin b12 lowers them"
    _, tq = _offsets(TEACHER, text_q, drop_special=True)
    _, tp = _offsets(TEACHER, text_p, drop_special=True)
    rng = np.random.default_rng(0)
    attention = rng.random((len(tq), len(tp)))
    aligned = align_attention(attention, tq, tp, tq, tp)
    np.testing.assert_allclose(aligned.target, attention / attention.sum(axis=1, keepdims=True), rtol=1e-6)
    assert aligned.query_mask.all() and aligned.passage_mask.all()


def test_passage_text_the_teacher_truncated_is_masked() -> None:
    _, tq = _offsets(TEACHER, "high levels", drop_special=True)
    _, tp = _offsets(TEACHER, "vitamin b12 lowers them", drop_special=True)
    _, sp = _offsets(STUDENT, "vitamin b12 lowers them", drop_special=False)
    truncated = tp[:2]  # the teacher read "vitamin b12" only
    aligned = align_attention(np.ones((len(tq), 2)), tq, truncated, tq, sp)
    np.testing.assert_array_equal(aligned.passage_mask, [False, True, True, True, False, False, False])
    np.testing.assert_allclose(aligned.target.sum(axis=1), 1.0, atol=1e-6)


def test_a_student_query_token_the_teacher_never_saw_gets_no_row() -> None:
    _, tp = _offsets(TEACHER, "vitamin b12", drop_special=True)
    teacher_q = np.array([[0, 4]])  # the teacher's query was cut after "high"
    student_q = np.array([[0, 0], [0, 4], [5, 11], [0, 0]])
    aligned = align_attention(np.array([[0.2, 0.2]]), teacher_q, tp, student_q, tp)
    np.testing.assert_array_equal(aligned.query_mask, [False, True, False, False])
    assert aligned.target[2].sum() == 0


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="teacher attention"):
        align_attention(np.ones((2, 3)), np.array([[0, 1]]), np.array([[0, 1], [2, 3], [4, 5]]), np.array([[0, 1]]), np.array([[0, 1]]))
