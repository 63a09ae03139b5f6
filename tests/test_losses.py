"""The MD2PR losses on small hand-made tensors (training/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import ContrastiveLoss, MarginMSELoss, MD2PRLoss, SentenceKDLoss, WordInputs, WordKDLoss


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------------------- contrastive
def test_contrastive_matches_the_formula() -> None:
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    positive = torch.tensor([[True, False, False], [False, True, False]])
    loss = ContrastiveLoss()(scores, positive)
    expected = (-math.log(_softmax([2.0, 0.5, -1.0])[0]) - math.log(_softmax([0.0, 1.0, 3.0])[1])) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_contrastive_multi_positive_and_excluded_columns() -> None:
    scores = torch.tensor([[2.0, 1.0, 5.0, 0.0]])
    positive = torch.tensor([[True, True, False, False]])
    valid = torch.tensor([[True, True, False, True]])  # column 2: a dropped false negative
    loss = ContrastiveLoss()(scores, positive, valid)
    expected = -math.log((math.exp(2) + math.exp(1)) / (math.exp(2) + math.exp(1) + math.exp(0)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # an excluded column cannot change the loss, however high its score
    assert float(ContrastiveLoss()(scores.clone().index_fill_(1, torch.tensor([2]), 100.0), positive, valid)) == float(loss)


def test_contrastive_refuses_rows_without_positive() -> None:
    with pytest.raises(ValueError, match="at least one positive"):
        ContrastiveLoss()(torch.zeros(2, 3), torch.tensor([[True, False, False], [False] * 3]))
    with pytest.raises(ValueError, match="outside valid_mask"):
        ContrastiveLoss()(torch.zeros(1, 2), torch.tensor([[True, False]]), torch.tensor([[False, True]]))


# ------------------------------------------------------------------------- sentence-level KD
def test_sentence_kd_is_zero_when_student_equals_teacher_and_positive_otherwise() -> None:
    teacher = torch.tensor([[3.0, 1.0, 0.0, -2.0], [0.5, 0.4, 0.3, 0.2]])
    kd = SentenceKDLoss()
    assert float(kd(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-7)
    assert float(kd(teacher + 7.0, teacher)) == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    assert float(kd(teacher.flip(-1), teacher)) > 0.1


def test_sentence_kd_direction_is_teacher_to_student() -> None:
    t, s = [2.0, 0.0, -1.0], [0.0, 1.0, 0.5]
    loss = SentenceKDLoss()(torch.tensor([s]), torch.tensor([t]))
    forward, backward = _kl(_softmax(t), _softmax(s)), _kl(_softmax(s), _softmax(t))
    assert float(loss) == pytest.approx(forward, rel=1e-6)
    assert abs(forward - backward) > 1e-3  # the example tells the two directions apart


def test_sentence_kd_temperatures() -> None:
    t, s = [4.0, 2.0, 0.0], [1.0, 3.0, 2.0]
    loss = SentenceKDLoss(teacher_temperature=2.0, student_temperature=0.5)(torch.tensor([s]), torch.tensor([t]))
    expected = _kl(_softmax([x / 2.0 for x in t]), _softmax([x / 0.5 for x in s]))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # the same distributions at different temperatures: zero
    same = SentenceKDLoss(teacher_temperature=2.0, student_temperature=1.0)(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([t]))
    assert float(same) == pytest.approx(0.0, abs=1e-7)
    scaled = SentenceKDLoss(student_temperature=2.0, scale_by_t2=True)(torch.tensor([s]), torch.tensor([t]))
    assert float(scaled) == pytest.approx(4 * _kl(_softmax(t), _softmax([x / 2 for x in s])), rel=1e-6)


def test_sentence_kd_masked_candidates_are_ignored() -> None:
    t = torch.tensor([[2.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 1.0, 2.0, 9.0], [3.0, 1.0, -5.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    loss = SentenceKDLoss()(s, t, mask)
    value = float(loss.detach())
    expected = (_kl(_softmax([2.0, 1.0, 0.0]), _softmax([0.0, 1.0, 2.0])) + _kl(_softmax([1.0, 0.0]), _softmax([3.0, 1.0]))) / 2
    assert value == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 3] == 0 and s.grad[1, 2:].abs().sum() == 0


# ------------------------------------------------------------------------------- MarginMSE
def _pairs_margin_mse(s: list[float], t: list[float]) -> float:
    """Mean over ordered pairs of ((s_j - s_k) - (t_j - t_k))^2, the definition written out."""
    n = len(s)
    return sum(((s[j] - s[k]) - (t[j] - t[k])) ** 2 for j in range(n) for k in range(n)) / (n * n)


def test_margin_mse_matches_the_all_pairs_definition_with_masks() -> None:
    t = torch.tensor([[2.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 1.0, 2.0, 9.0], [3.0, 1.0, -5.0, 7.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False], [True, False, False, False]])
    loss = MarginMSELoss()(s, t, mask)  # the third row has one candidate: no pair, left out
    expected = (_pairs_margin_mse([0.0, 1.0, 2.0], [2.0, 1.0, 0.0]) + _pairs_margin_mse([3.0, 1.0], [1.0, -1.0])) / 2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad[0, 3] == 0 and s.grad[1, 2:].abs().sum() == 0 and s.grad[2].abs().sum() == 0


def test_margin_mse_ignores_a_per_query_shift_but_not_a_scale() -> None:
    t = torch.tensor([[3.0, 1.0, -2.0]])
    assert float(MarginMSELoss()(t + 7.5, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(MarginMSELoss()(2 * t, t)) > 1.0  # the KL-style ranking match is not enough
    # temperatures divide each side before the margins
    assert float(MarginMSELoss(teacher_temperature=2.0, student_temperature=4.0)(2 * t, t)) == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_takes_margin_mse_as_its_sentence_term() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.4, 0.8]])
    positive = torch.tensor([[True, False, False], [False, False, True]])
    kd_index = torch.tensor([[0, 1, 2], [2, 0, 1]])
    kd_teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.5, -1.0]])
    out = MD2PRLoss(word_weight=0.0, tau=0.1, kd_loss="margin_mse")(similarity, positive, None, kd_index, kd_teacher)
    scores = similarity / 0.1
    assert float(out.terms["sentence_kd"]) == pytest.approx(float(MarginMSELoss()(scores.gather(1, kd_index), kd_teacher)))
    assert float(out.terms["sentence_kd"]) != pytest.approx(float(SentenceKDLoss()(scores.gather(1, kd_index), kd_teacher)))
    with pytest.raises(ValueError, match="kd_loss"):
        MD2PRLoss(kd_loss="mse")


# ----------------------------------------------------------------------------- word-level KD
def _word_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 4, generator=g)
    p = torch.randn(2, 5, 4, generator=g)
    target = torch.rand(2, 3, 5, generator=g)
    q_mask = torch.tensor([[True, True, False], [True, False, False]])
    p_mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    target = target * p_mask[:, None, :]
    target = target / target.sum(-1, keepdim=True)
    return q, p, target, q_mask, p_mask


def test_word_kd_is_zero_for_the_students_own_matrix_and_positive_otherwise() -> None:
    q, p, target, q_mask, p_mask = _word_case()
    loss = WordKDLoss(temperature=0.5)
    own = loss.student_log_matrix(q, p, p_mask).exp() * p_mask[:, None, :]
    assert float(loss(q, p, own, q_mask, p_mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(q, p, target, q_mask, p_mask)) > 0.01


def test_word_kd_averages_over_real_query_tokens() -> None:
    q, p, target, q_mask, p_mask = _word_case()
    loss = WordKDLoss(temperature=0.5, normalize=False)
    got = float(loss(q, p, target, q_mask, p_mask))
    values = []
    for b in range(2):
        n = int(p_mask[b].sum())
        for i in range(3):
            if q_mask[b, i]:
                sims = [float(q[b, i] @ p[b, j]) / 0.5 for j in range(n)]
                values.append(_kl(target[b, i, :n].tolist(), _softmax(sims)))
    assert len(values) == 3
    assert got == pytest.approx(sum(values) / 3, rel=1e-5)


def test_word_kd_ignores_masked_tokens_and_padding() -> None:
    q, p, target, q_mask, p_mask = _word_case()
    loss = WordKDLoss(temperature=0.1)
    base = float(loss(q, p, target, q_mask, p_mask))
    # anything in masked query tokens and masked passage tokens
    q2, p2 = q.clone(), p.clone()
    q2[~q_mask] = 50.0
    p2[~p_mask] = -30.0
    assert float(loss(q2, p2, target, q_mask, p_mask)) == pytest.approx(base, rel=1e-6)
    # more padding on both sides
    pad_q = torch.cat([q, torch.randn(2, 4, 4)], dim=1)
    pad_p = torch.cat([p, torch.randn(2, 6, 4)], dim=1)
    pad_target = torch.cat([torch.cat([target, torch.zeros(2, 3, 6)], dim=2), torch.zeros(2, 4, 11)], dim=1)
    pad_q_mask = torch.cat([q_mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    pad_p_mask = torch.cat([p_mask, torch.zeros(2, 6, dtype=torch.bool)], dim=1)
    assert float(loss(pad_q, pad_p, pad_target, pad_q_mask, pad_p_mask)) == pytest.approx(base, rel=1e-6)


def test_word_kd_gradients_are_finite_and_skip_masked_tokens() -> None:
    q, p, target, q_mask, p_mask = _word_case()
    q.requires_grad_(True)
    p.requires_grad_(True)
    WordKDLoss()(q, p, target, q_mask, p_mask).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()
    assert q.grad[~q_mask].abs().sum() == 0 and p.grad[~p_mask].abs().sum() == 0
    assert q.grad[q_mask].abs().sum() > 0


def test_word_kd_without_real_tokens_is_zero() -> None:
    q, p, target, _, p_mask = _word_case()
    assert float(WordKDLoss()(q, p, target, torch.zeros(2, 3, dtype=torch.bool), p_mask)) == 0.0


# ------------------------------------------------------------------------------ combined
def test_combined_loss_returns_each_term_and_their_weighted_sum() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.3, 0.2], [0.2, 0.4, 0.8, 0.1]], requires_grad=True)
    positive = torch.tensor([[True, False, False, False], [False, False, True, False]])
    kd_index = torch.tensor([[0, 1], [2, 3]])
    kd_teacher = torch.tensor([[2.0, 0.0], [1.0, 1.5]])
    q, p, target, q_mask, p_mask = _word_case()
    word = WordInputs(q, p, target, q_mask, p_mask)
    fn = MD2PRLoss(contrastive_weight=1.0, sentence_weight=0.5, word_weight=0.25, tau=0.1, word_temperature=0.2)
    out = fn(similarity, positive, None, kd_index, kd_teacher, None, word)
    assert set(out.terms) == {"contrastive", "sentence_kd", "word_kd"}
    scores = similarity.detach() / 0.1
    terms = {k: float(v.detach()) for k, v in out.terms.items()}
    assert terms["contrastive"] == pytest.approx(float(ContrastiveLoss()(scores, positive)))
    assert terms["sentence_kd"] == pytest.approx(float(SentenceKDLoss()(scores.gather(1, kd_index), kd_teacher)))
    assert terms["word_kd"] == pytest.approx(float(WordKDLoss(0.2)(q, p, target, q_mask, p_mask)))
    expected = terms["contrastive"] + 0.5 * terms["sentence_kd"] + 0.25 * terms["word_kd"]
    assert float(out.total.detach()) == pytest.approx(expected)
    floats = out.as_floats()
    assert floats["loss"] == pytest.approx(expected) and set(floats) == {"loss", "contrastive", "sentence_kd", "word_kd"}
    out.total.backward()
    assert torch.isfinite(similarity.grad).all()


def test_switched_off_terms_are_not_computed() -> None:
    similarity = torch.tensor([[0.9, 0.1]])
    positive = torch.tensor([[True, False]])
    out = MD2PRLoss(sentence_weight=0.0, word_weight=0.0)(similarity, positive)
    assert set(out.terms) == {"contrastive"}
    kd_only = MD2PRLoss(contrastive_weight=0.0, word_weight=0.0)(
        similarity, positive, kd_index=torch.tensor([[0, 1]]), kd_teacher=torch.tensor([[1.0, 0.0]])
    )
    assert set(kd_only.terms) == {"sentence_kd"} and float(kd_only.total) > 0
    with pytest.raises(ValueError, match="at least one loss weight"):
        MD2PRLoss(0.0, 0.0, 0.0)
