"""benchmarks/filter_check.py: every rule scored against hidden positives on the same records."""

from __future__ import annotations

import pytest

from benchmarks.filter_check import RULES, check_rules
from training.data import Candidate, TrainingRecord


def _record(qid: str, positive: tuple[float, float], negatives: dict[str, tuple[float, float]]) -> TrainingRecord:
    """Scores as (teacher_score, cross_encoder_score)."""
    return TrainingRecord(
        query_id=qid, query=f"query {qid}",
        positives=[Candidate(docid=f"{qid}-p", relevance=1, teacher_score=positive[0], cross_encoder_score=positive[1])],
        negatives=[Candidate(docid=d, relevance=0, teacher_score=t, cross_encoder_score=c) for d, (t, c) in negatives.items()],
    )


def test_rules_are_scored_against_the_hidden_positives_mined_as_negatives() -> None:
    records = [
        # h1 is a hidden positive the cross-encoder rates like the positive; n1 a true negative the fused score likes
        _record("a", (3.0, 6.0), {"h1": (2.0, 5.9), "n1": (2.99, 0.0), "n2": (0.0, -4.0)}),
        _record("b", (2.0, 4.0), {"h2": (-1.0, -3.0), "n3": (0.5, 0.0)}),  # h2: a hidden positive nobody can catch
    ]
    hidden = {"a": {"h1"}, "b": {"h2"}, "c": {"h3"}}  # h3 was never mined
    out = check_rules(records, hidden)
    assert set(out) == set(RULES)
    ce = out["ratio 0.8 / cross-encoder"]
    assert (ce["flagged"], ce["flagged_hidden"], ce["hidden_mined_as_negatives"], ce["hidden_positives"]) == (1, 1, 2, 3)
    assert ce["precision"] == 1.0 and ce["recall"] == 0.5 and ce["flagged_fraction"] == pytest.approx(1 / 5)
    fused = out["ratio 0.8 / teacher"]
    assert fused["flagged"] == 1 and fused["flagged_hidden"] == 0 and fused["precision"] == 0.0 and fused["recall"] == 0.0
