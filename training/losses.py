"""The MD2PR losses, each an ``nn.Module`` over plain tensors (no model inside), so the maths
can be tested on small hand-made tensors (``tests/test_losses.py``).

- :class:`ContrastiveLoss`: InfoNCE on the labelled positive(s) against in-batch and hard negatives.
- :class:`SentenceKDLoss`: ``KL(softmax(t / T_t) || softmax(s / T_s))`` over each query's
  candidate list (teacher ``t``, student ``s``), the sentence-level distillation of DESIGN.md.
- :class:`MarginMSELoss`: the alternative sentence-level term, MarginMSE (Hofstaetter et al.,
  2020) over every pair of a query's candidates.
- :class:`WordKDLoss`: ``KL(A_teacher || softmax(H_q H_p^T / tau_w))`` per real query token,
  averaged over real query tokens, the word-level distillation.
- :class:`MD2PRLoss`: the weighted sum; returns every term so the trainer logs each one.

KL is always teacher || student (``sum t * (log t - log s)``), the direction that makes the
student cover what the teacher finds relevant. Masked entries (dropped candidates, special
tokens, padding) never reach a softmax, so a masked position cannot change any value, and the
losses stay finite (no ``0 * -inf``) with finite gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

_NEG = float("-inf")


def _masked_log_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dim restricted to ``mask``; masked entries are 0 (not -inf),
    so multiplying them by a zero probability gives 0 and no NaN gradient."""
    log_p = F.log_softmax(scores.masked_fill(~mask, _NEG), dim=-1)
    return log_p.masked_fill(~mask, 0.0)


def _kl_rows(target: torch.Tensor, log_student: torch.Tensor) -> torch.Tensor:
    """``sum_j target_j * (log target_j - log_student_j)`` per row; ``0 log 0 = 0``."""
    return (torch.xlogy(target, target) - target * log_student).sum(dim=-1)


class ContrastiveLoss(nn.Module):
    """InfoNCE: ``-log(sum_{j in pos} exp(s_ij) / sum_{j in valid} exp(s_ij))``, mean over queries.

    ``scores [queries, columns]`` are already scaled (``cosine / tau``); the columns are every
    passage of the batch (own group and the other queries' passages: in-batch negatives).
    ``positive_mask [queries, columns]`` marks the positives of each query (one labelled
    positive, or several: a passage judged relevant to the query that sits in another query's
    group, or a suspected false negative counted as a positive); ``valid_mask`` (default all)
    marks the columns that take part at all (a dropped suspected false negative does not).
    Every row needs at least one positive; positives outside ``valid_mask`` are an error.
    """

    def forward(
        self, scores: torch.Tensor, positive_mask: torch.Tensor, valid_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        positive_mask = positive_mask.bool()
        valid = torch.ones_like(positive_mask) if valid_mask is None else valid_mask.bool()
        if (positive_mask & ~valid).any():
            raise ValueError("a positive column is outside valid_mask")
        if not positive_mask.any(dim=-1).all():
            raise ValueError("every query needs at least one positive column")
        numerator = torch.logsumexp(scores.masked_fill(~positive_mask, _NEG), dim=-1)  # [queries]
        denominator = torch.logsumexp(scores.masked_fill(~valid, _NEG), dim=-1)  # [queries]
        return (denominator - numerator).mean()


class SentenceKDLoss(nn.Module):
    """Sentence-level KD: ``KL(softmax(t / T_t) || softmax(s / T_s))`` over each query's candidates.

    ``student_scores`` and ``teacher_scores`` are ``[queries, candidates]`` (the student's
    already ``cosine / tau``); ``mask`` (default all) marks real candidates (lists of different
    lengths are padded). Mean over queries with at least one candidate. ``scale_by_t2``
    multiplies by ``T_s^2`` (Hinton et al.: keeps gradient size independent of the temperature).
    Zero exactly when the two distributions agree, positive otherwise.
    """

    def __init__(self, teacher_temperature: float = 1.0, student_temperature: float = 1.0, scale_by_t2: bool = False) -> None:
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be positive")
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.scale_by_t2 = scale_by_t2

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if student_scores.shape != teacher_scores.shape:
            raise ValueError(f"student {tuple(student_scores.shape)} vs teacher {tuple(teacher_scores.shape)} scores")
        mask = torch.ones_like(student_scores, dtype=torch.bool) if mask is None else mask.bool()
        teacher_scores = teacher_scores.detach().to(student_scores.dtype)
        target = _masked_log_softmax(teacher_scores / self.teacher_temperature, mask).exp() * mask  # [queries, cands]
        log_student = _masked_log_softmax(student_scores / self.student_temperature, mask)  # [queries, cands]
        kl = _kl_rows(target, log_student)  # [queries]
        rows = mask.any(dim=-1)
        loss = kl[rows].mean() if rows.any() else student_scores.sum() * 0.0
        return loss * self.student_temperature**2 if self.scale_by_t2 else loss


class MarginMSELoss(nn.Module):
    """All-pairs MarginMSE over each query's candidate list (Hofstaetter et al., 2020, listwise).

    For every pair ``(j, k)`` of a query's real candidates the student's margin
    ``s_j / T_s - s_k / T_s`` should equal the teacher's ``t_j / T_t - t_k / T_t``; the loss is
    the mean squared margin error over all ordered pairs, averaged over queries with at least
    two candidates. Computed without the pair matrix: with ``d = s / T_s - t / T_t`` over the
    ``n`` real candidates, ``sum_{j,k} (d_j - d_k)^2 = 2 n sum_j (d_j - mean d)^2``, so the value
    is twice the variance of ``d``. Unlike the KL it is scale-sensitive (the student must match the
    teacher's score spread, not only its ranking) and weighs every pair alike, not the top ones
    most. Zero exactly when student and teacher differ by a per-query constant.
    """

    def __init__(self, teacher_temperature: float = 1.0, student_temperature: float = 1.0) -> None:
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be positive")
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if student_scores.shape != teacher_scores.shape:
            raise ValueError(f"student {tuple(student_scores.shape)} vs teacher {tuple(teacher_scores.shape)} scores")
        mask = torch.ones_like(student_scores, dtype=torch.bool) if mask is None else mask.bool()
        teacher = teacher_scores.detach().to(student_scores.dtype) / self.teacher_temperature
        diff = (student_scores / self.student_temperature - teacher).masked_fill(~mask, 0.0)  # [queries, cands]
        n = mask.sum(dim=-1)  # [queries]
        rows = n >= 2
        if not rows.any():
            return student_scores.sum() * 0.0
        mean = diff.sum(dim=-1) / n.clamp(min=1)  # [queries]
        centred = (diff - mean[:, None]).masked_fill(~mask, 0.0)
        variance = centred.pow(2).sum(dim=-1) / n.clamp(min=1)  # [queries]
        return (2.0 * variance[rows]).mean()


#: The sentence-level KD terms by ``DistillConfig.kd_loss`` name.
SENTENCE_KD_LOSSES = {"kl": SentenceKDLoss, "margin_mse": MarginMSELoss}


class WordKDLoss(nn.Module):
    """Word-level KD: KL between the teacher's aligned attention and the student's matching matrix.

    Inputs, for ``pairs`` (query, passage) pairs:

    - ``query_states [pairs, q_len, hidden]``, ``passage_states [pairs, p_len, hidden]``: the
      student's last-layer token states (the same forward that gives its pooled vectors);
    - ``target [pairs, q_len, p_len]``: the teacher's query->passage attention on the student's
      tokens (:func:`training.alignment.align_attention`), rows summing to 1 where ``query_mask``;
    - ``query_mask [pairs, q_len]``: real query tokens with a target row (special tokens,
      padding and tokens the teacher did not see are false);
    - ``passage_mask [pairs, p_len]``: passage tokens the student's row softmax runs over.

    The student's matrix is the row softmax of ``H_q H_p^T / temperature`` over masked passage
    tokens (with ``normalize``, ``H`` rows are L2-normalised first: cosine similarities, whose
    scale does not drift with the hidden-state norms). The loss is the KL per query token,
    averaged over every real query token of the batch. Padding never changes the value.
    """

    def __init__(self, temperature: float = 0.05, normalize: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature
        self.normalize = normalize

    def student_log_matrix(
        self, query_states: torch.Tensor, passage_states: torch.Tensor, passage_mask: torch.Tensor
    ) -> torch.Tensor:
        """``log softmax(H_q H_p^T / tau_w)`` over masked passage tokens: ``[pairs, q_len, p_len]`` (0 where masked)."""
        if self.normalize:
            query_states = F.normalize(query_states, dim=-1)
            passage_states = F.normalize(passage_states, dim=-1)
        sims = torch.einsum("bqh,bph->bqp", query_states, passage_states) / self.temperature  # [pairs, q_len, p_len]
        mask = passage_mask.bool()[:, None, :].expand_as(sims)
        return _masked_log_softmax(sims, mask)

    def forward(
        self,
        query_states: torch.Tensor,
        passage_states: torch.Tensor,
        target: torch.Tensor,
        query_mask: torch.Tensor,
        passage_mask: torch.Tensor,
    ) -> torch.Tensor:
        pairs, q_len, p_len = target.shape
        if query_states.shape[:2] != (pairs, q_len) or passage_states.shape[:2] != (pairs, p_len):
            raise ValueError(
                f"states {tuple(query_states.shape)} / {tuple(passage_states.shape)} do not match target {tuple(target.shape)}"
            )
        passage_mask = passage_mask.bool()
        log_student = self.student_log_matrix(query_states, passage_states, passage_mask)  # [pairs, q_len, p_len]
        target = target.detach().to(log_student.dtype) * passage_mask[:, None, :]
        kl = _kl_rows(target, log_student)  # [pairs, q_len]
        tokens = query_mask.bool()
        if not tokens.any():
            return log_student.sum() * 0.0
        return kl[tokens].mean()


@dataclass
class LossOutput:
    """The combined loss and each (unweighted) term, as floats-ready tensors, for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_floats(self) -> dict[str, float]:
        """``{"loss": total, "<term>": value, ...}`` as Python floats."""
        return {"loss": float(self.total.detach()), **{k: float(v.detach()) for k, v in self.terms.items()}}


@dataclass
class WordInputs:
    """The tensors :class:`WordKDLoss` takes (see there)."""

    query_states: torch.Tensor
    passage_states: torch.Tensor
    target: torch.Tensor
    query_mask: torch.Tensor
    passage_mask: torch.Tensor


class MD2PRLoss(nn.Module):
    """``contrastive_weight * InfoNCE + sentence_weight * sentence KD + word_weight * word KD``.

    A term with weight 0 is not computed (the ablation switches). Inputs:

    - ``similarity [queries, columns]``: the student's cosine similarities of each query with
      every passage of the batch; divided by ``tau`` here (``s = sim / tau``, DESIGN.md);
    - ``positive_mask`` / ``valid_mask`` ``[queries, columns]`` for :class:`ContrastiveLoss`;
    - ``kd_index [queries, candidates]`` (long): the columns of each query's candidate list,
      ``kd_teacher`` the teacher's scores of those candidates and ``kd_mask`` the real ones;
    - ``word``: a :class:`WordInputs`, or ``None`` when there is nothing to distil at word level.

    ``kd_loss`` names the sentence-level term (:data:`SENTENCE_KD_LOSSES`): ``"kl"``
    (:class:`SentenceKDLoss`) or ``"margin_mse"`` (:class:`MarginMSELoss`).
    """

    def __init__(
        self,
        contrastive_weight: float = 1.0,
        sentence_weight: float = 1.0,
        word_weight: float = 1.0,
        tau: float = 0.05,
        kd_teacher_temperature: float = 1.0,
        kd_student_temperature: float = 1.0,
        word_temperature: float = 0.05,
        word_normalize: bool = True,
        kd_loss: str = "kl",
    ) -> None:
        super().__init__()
        if kd_loss not in SENTENCE_KD_LOSSES:
            raise ValueError(f"kd_loss must be one of {sorted(SENTENCE_KD_LOSSES)}")
        if min(contrastive_weight, sentence_weight, word_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if contrastive_weight == sentence_weight == word_weight == 0:
            raise ValueError("at least one loss weight must be positive")
        if tau <= 0:
            raise ValueError("tau must be positive")
        self.weights = {"contrastive": contrastive_weight, "sentence_kd": sentence_weight, "word_kd": word_weight}
        self.tau = tau
        self.contrastive = ContrastiveLoss()
        self.sentence = SENTENCE_KD_LOSSES[kd_loss](kd_teacher_temperature, kd_student_temperature)
        self.word = WordKDLoss(word_temperature, word_normalize)

    def forward(
        self,
        similarity: torch.Tensor,
        positive_mask: torch.Tensor,
        valid_mask: torch.Tensor | None = None,
        kd_index: torch.Tensor | None = None,
        kd_teacher: torch.Tensor | None = None,
        kd_mask: torch.Tensor | None = None,
        word: WordInputs | None = None,
    ) -> LossOutput:
        scores = similarity / self.tau  # [queries, columns]
        terms: dict[str, torch.Tensor] = {}
        if self.weights["contrastive"] > 0:
            terms["contrastive"] = self.contrastive(scores, positive_mask, valid_mask)
        if self.weights["sentence_kd"] > 0:
            if kd_index is None or kd_teacher is None:
                raise ValueError("sentence-level KD needs kd_index and kd_teacher")
            terms["sentence_kd"] = self.sentence(scores.gather(1, kd_index), kd_teacher, kd_mask)
        if self.weights["word_kd"] > 0 and word is not None:
            terms["word_kd"] = self.word(word.query_states, word.passage_states, word.target, word.query_mask, word.passage_mask)
        total = sum((self.weights[name] * value for name, value in terms.items()), start=similarity.sum() * 0.0)
        return LossOutput(total, terms)
