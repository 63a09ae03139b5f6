"""benchmarks/filter_check.py: every rule scored against hidden positives on the same records."""

from __future__ import annotations

import pytest

from benchmarks.filter_check import RULES, check_rules, frontiers, operating_points
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


def test_operating_points_sweep_every_margin_cut_and_say_whether_the_target_is_reachable() -> None:
    records = [
        # margins to the positive (teacher): h1 -0.5, n1 +0.2, n2 -3 ; h2 -2, n3 -1 ; h3 +0.1
        _record("a", (3.0, 0.0), {"h1": (2.5, 0.0), "n1": (3.2, 0.0), "n2": (0.0, 0.0)}),
        _record("b", (2.0, 0.0), {"h2": (0.0, 0.0), "n3": (1.0, 0.0)}),
        _record("c", (1.0, 0.0), {"h3": (1.1, 0.0), "n4": (-5.0, 0.0)}),
    ]
    hidden = {"a": {"h1"}, "b": {"h2"}, "c": {"h3"}}
    out = operating_points(records, hidden, "teacher", precision=0.5, recall=0.6)
    assert out["hidden_mined_as_negatives"] == 3
    # ranks among their query's negatives: h1 2nd (below n1), h2 2nd, h3 1st
    assert out["hidden_rank_median"] == 2.0 and out["hidden_rank_1_share"] == pytest.approx(1 / 3, abs=1e-4)
    # cuts by margin: n1 (+0.2), h3 (+0.1), h1 (-0.5), n3 (-1), h2 (-2), n2 (-3), n4 (-6)
    best = out["best_precision_at_recall_0.6"]
    assert (best["flagged"], best["flagged_hidden"], best["delta"]) == (3, 2, -0.5)
    assert best["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert out["best_recall_at_precision_0.5"]["recall"] == 1.0  # all 7 flagged: 3/7 < 0.5; 5 flagged: 3/5
    assert out["reaches_target"] is True
    assert operating_points(records, hidden, "teacher", precision=0.7, recall=0.6)["reaches_target"] is False
    # top-1 only: a (n1), b (n3), c (h3) are the candidates; h1 and h2 can never be flagged
    top1 = operating_points(records, hidden, "teacher", top1=True, precision=0.5, recall=0.6)
    assert top1["best_precision_at_recall_0.6"] is None and top1["reaches_target"] is False
    at_half = top1["best_recall_at_precision_0.5"]  # h3 comes after n1: 1 of 2 flags, a third of the hidden
    assert (at_half["flagged"], at_half["precision"], at_half["recall"]) == (2, 0.5, 0.3333)
    assert set(frontiers(records, hidden)) == {"teacher", "teacher / top-1 only", "cross-encoder", "cross-encoder / top-1 only"}


def test_ties_in_the_margin_fall_on_one_side_of_every_cut() -> None:
    records = [_record("a", (1.0, 0.0), {"h": (0.0, 0.0), "n": (0.0, 0.0)})]
    out = operating_points(records, {"a": {"h"}}, "teacher", precision=0.6, recall=0.5)
    best = out["best_precision_at_recall_0.5"]
    assert (best["flagged"], best["precision"]) == (2, 0.5)  # h cannot be flagged without its tie n
    assert out["best_recall_at_precision_0.6"] is None and out["reaches_target"] is False


def test_the_results_section_shows_each_frontier_and_whether_the_target_is_reachable() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from render_distill_seeds import render_filter_check

    records = [_record("a", (3.0, 1.0), {"h1": (2.5, 2.0), "n1": (3.2, 0.0)})]
    hidden = {"a": {"h1"}}
    report = {"hide": 0.2, "hidden_positives": 1, "seed": 0, "command": "python benchmarks/filter_check.py",
              "machine": {"cpus": 2, "threads": 2, "load_average_at_start": [0.0, 0.0, 0.0]}, "train_rule": "gap",
              "iterations": [{"iteration": 1, "mined_by": "BM25 + base student", "rules": check_rules(records, hidden),
                              "frontiers": frontiers(records, hidden)}]}
    text = "\n".join(render_filter_check(report, "x.json"))
    # teacher: n1 outranks h1 (best at recall >= 0.8: both flagged, 0.5); cross-encoder: h1 above the positive alone
    assert "| 1 | teacher | 2.0 | 0.000 | 0.500 / 1.000 (2 flags, delta -0.50) |" in text
    assert "| 1 | cross-encoder | 1.0 | 1.000 | 1.000 / 1.000 (1 flags, delta +1.00) |" in text
    assert "| 1 | teacher / top-1 only | 2.0 | 0.000 | none reaches it | none reaches it | no |" in text
