"""Dynamic false-negative filtering as pure functions (training/false_negatives.py)."""

from __future__ import annotations

import pytest

from training.data import Candidate, TrainingRecord
from training.errors import TrainingError
from training.false_negatives import (
    FilterConfig,
    apply_filter,
    filter_false_negatives,
    flag_quality,
    global_floor,
    query_threshold,
    with_pseudo_positive,
)


def _record(qid: str, positives: dict[str, float], negatives: dict[str, float]) -> TrainingRecord:
    return TrainingRecord(
        query_id=qid,
        query=f"query {qid}",
        positives=[Candidate(docid=d, relevance=1, teacher_score=s) for d, s in positives.items()],
        negatives=[Candidate(docid=d, relevance=0, sources={"bm25": i + 1}, teacher_score=s) for i, (d, s) in enumerate(negatives.items())],
    )


def _records(shift: float = 0.0) -> list[TrainingRecord]:
    """Three queries; q1's n1 scores like a positive, q2's positive is weak (the teacher disagrees)."""
    raw = [
        ("q1", {"p1": 8.0}, {"n1": 7.9, "n2": 2.0, "n3": 1.0, "n4": 0.0}),
        ("q2", {"p2": 3.0}, {"m1": 6.0, "m2": 2.9, "m3": 1.0}),
        ("q3", {"p3": 6.0, "p4": 5.0}, {"k1": 5.5, "k2": 0.0, "k3": -1.0}),
    ]
    return [_record(q, {d: s + shift for d, s in p.items()}, {d: s + shift for d, s in n.items()}) for q, p, n in raw]


def test_floor_is_a_percentile_of_positive_scores() -> None:
    assert global_floor([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert global_floor([1.0, 2.0, 3.0, 4.0, 5.0], 0) == 1.0
    assert global_floor([0.0, 10.0], 10) == pytest.approx(1.0)
    with pytest.raises(TrainingError, match="no labelled positive"):
        global_floor([], 10)


def test_query_threshold_combines_floor_and_relative_margin() -> None:
    # best 8, median of negatives 1.5 -> gap 6.5; margin 0.1 -> 8 - 0.65
    assert query_threshold(3.0, [8.0], [7.9, 2.0, 1.0, 0.0], 0.1) == pytest.approx(7.35)
    # the floor wins when the query's own bar is lower
    assert query_threshold(5.0, [3.0], [6.0, 2.9, 1.0], 0.1) == 5.0
    # a negative gap (negatives above the positive) is clamped: the bar is the positive itself
    assert query_threshold(0.0, [3.0], [6.0, 5.0, 4.0], 0.5) == 3.0
    assert query_threshold(2.0, [], [1.0], 0.1) == 2.0 and query_threshold(2.0, [4.0], [], 0.1) == 2.0


def test_dynamic_filter_flags_what_scores_like_a_positive() -> None:
    records = _records()
    result = filter_false_negatives(records, FilterConfig(percentile=25, margin=0.1))
    # positive scores 8, 3, 6, 5 -> 25th percentile 4.5
    assert result.floor == pytest.approx(4.5)
    assert result.thresholds["q1"] == pytest.approx(7.35)
    assert result.thresholds["q2"] == pytest.approx(4.5)  # max(4.5, 3 - 0.1 * (3 - 2.9))
    assert result.thresholds["q3"] == pytest.approx(6.0 - 0.1 * 6.0)
    assert result.flagged == {"q1": ["n1"], "q2": ["m1"], "q3": ["k1"]}
    summary = result.summary()
    assert summary["flagged"] == 3 and summary["negatives"] == 10 and summary["queries_with_flags"] == 3
    assert summary["floor"] == pytest.approx(4.5) and summary["threshold_max"] == pytest.approx(7.35)


def test_threshold_moves_when_the_score_distribution_moves() -> None:
    config = FilterConfig(percentile=25, margin=0.1)
    base = filter_false_negatives(_records(), config)
    shifted = filter_false_negatives(_records(shift=10.0), config)
    assert shifted.floor == pytest.approx(base.floor + 10.0)
    for qid, threshold in base.thresholds.items():
        assert shifted.thresholds[qid] == pytest.approx(threshold + 10.0)
    assert shifted.flagged == base.flagged  # the same decisions, on the new scale
    # only the positives get stronger: the floor rises and fewer negatives pass
    stronger = [r.model_copy(update={"positives": [c.model_copy(update={"teacher_score": c.teacher_score + 3}) for c in r.positives]})
                for r in _records()]
    moved = filter_false_negatives(stronger, config)
    assert moved.floor > base.floor and moved.flagged_count < base.flagged_count


def test_labelled_positives_are_never_dropped() -> None:
    records = _records()
    # whatever the scores, positives are not candidates of the test...
    low = [r.model_copy(update={"positives": [c.model_copy(update={"teacher_score": -100.0}) for c in r.positives]}) for r in records]
    for config in (FilterConfig(percentile=0, margin=0), FilterConfig(percentile=100, margin=1), FilterConfig(mode="static", static_threshold=-1e9)):
        result = filter_false_negatives(low, config)
        flagged = {d for docids in result.flagged.values() for d in docids}
        assert not flagged & {c.docid for r in low for c in r.positives}
        for record in low:
            view = apply_filter(record, result.flagged.get(record.query_id, ()), config.action)
            assert set(view.positives) >= {c.docid for c in record.positives}
    # ...and even a flag list naming a positive leaves it a positive
    view = apply_filter(records[0], ["p1", "n1"], "drop")
    assert view.positives == ("p1",) and "p1" not in view.excluded and view.excluded == frozenset({"n1"})
    assert "n1" not in view.negatives


def test_flagged_negatives_can_count_as_positives() -> None:
    view = apply_filter(_records()[0], ["n1"], "positive")
    assert view.positives == ("p1", "n1") and view.negatives == ("n2", "n3", "n4") and not view.excluded


def test_static_threshold_is_the_same_for_every_query() -> None:
    fixed = filter_false_negatives(_records(), FilterConfig(mode="static", static_threshold=5.0))
    assert set(fixed.thresholds.values()) == {5.0}
    assert fixed.flagged == {"q1": ["n1"], "q2": ["m1"], "q3": ["k1"]}
    # without a value: the frozen threshold handed in (the first iteration's floor), whatever the scores now
    frozen = filter_false_negatives(_records(shift=10.0), FilterConfig(mode="static"), frozen_threshold=4.5)
    assert set(frozen.thresholds.values()) == {4.5} and frozen.flagged_count == 10  # every shifted negative is above it
    first = filter_false_negatives(_records(), FilterConfig(mode="static", percentile=25))
    assert list(first.thresholds.values()) == pytest.approx([4.5] * 3)


def test_no_filter_flags_nothing() -> None:
    result = filter_false_negatives(_records(), FilterConfig(mode="none"))
    assert result.flagged == {} and result.floor is None and result.thresholds == {}
    assert result.summary()["flagged"] == 0


def test_missing_teacher_scores_and_bad_settings_are_errors() -> None:
    record = _record("q", {"p": 1.0}, {"n": 0.0})
    record.negatives[0].teacher_score = None
    with pytest.raises(TrainingError, match="no teacher_score"):
        filter_false_negatives([record], FilterConfig())
    with pytest.raises(TrainingError, match="percentile"):
        FilterConfig(percentile=120)
    with pytest.raises(TrainingError, match="mode"):
        FilterConfig(mode="sometimes")  # type: ignore[arg-type]


def test_flag_quality_against_hidden_positives() -> None:
    records = _records()
    hidden = {"q1": {"n1", "n9"}, "q2": {"m2"}}  # n9 was never mined; m2 was mined but not flagged
    quality = flag_quality({"q1": ["n1"], "q2": ["m1"], "q3": ["k1"]}, hidden, records)
    assert quality == {
        "hidden_positives": 3,
        "hidden_mined_as_negatives": 2,
        "flagged": 3,
        "flagged_hidden": 1,
        "precision": pytest.approx(1 / 3),
        "recall": pytest.approx(1 / 2),
    }
    assert flag_quality({}, {}, records)["precision"] is None


def test_an_unlabelled_query_trains_on_the_teachers_best_candidate() -> None:
    unlabelled = TrainingRecord(
        query_id="u1", query="query u1", positives=[],
        negatives=[Candidate(docid=d, sources={"bm25": i + 1}, teacher_score=s)
                   for i, (d, s) in enumerate({"a": 1.0, "b": 7.0, "c": 6.95, "d": 7.0, "e": 0.0}.items())],
    )
    pseudo = with_pseudo_positive(unlabelled)
    # the best teacher score wins; of equal maxima, the better-ranked candidate
    assert [c.docid for c in pseudo.positives] == ["b"] and [c.docid for c in pseudo.negatives] == ["a", "c", "d", "e"]
    assert pseudo.positives[0].relevance == 0  # the teacher's label, not a judgement
    labelled = _records()[0]
    assert with_pseudo_positive(labelled) == labelled
    assert with_pseudo_positive(TrainingRecord(query_id="x", query="x", positives=[], negatives=[])).positives == []

    records = _records() + [pseudo]
    result = filter_false_negatives(records, FilterConfig(percentile=0.0, margin=0.1))
    # the floor comes from judged positives only (min of 8, 3, 6, 5), the margin from the pseudo-positive
    assert result.floor == 3.0 and result.labelled_positives == 4
    assert result.thresholds["u1"] == pytest.approx(max(3.0, 7.0 - 0.1 * (7.0 - 3.975)))
    assert result.flagged["u1"] == ["c", "d"]  # near-ties with the pseudo-positive, never the pseudo-positive itself
    view = apply_filter(pseudo, result.flagged["u1"], "drop")
    assert view.positives == ("b",) and view.negatives == ("a", "e") and view.excluded == {"c", "d"}


def test_no_filter_needs_no_teacher_scores() -> None:
    record = _record("q", {"p": 1.0}, {"n": 0.0})
    record.positives[0].teacher_score = record.negatives[0].teacher_score = None  # a run without a teacher
    result = filter_false_negatives([record], FilterConfig(mode="none"))
    assert result.flagged == {} and result.summary()["flagged"] == 0 and result.summary()["negatives"] == 1


def test_ratio_rule_flags_negatives_near_their_own_positive_only() -> None:
    import math

    records = _records()
    result = filter_false_negatives(records, FilterConfig(rule="ratio", ratio=0.5))
    # bar = best positive + ln 0.5: q1 8 - 0.693, q2 3 - 0.693, q3 6 - 0.693 (best of p3 6, p4 5)
    assert result.floor is None  # no global floor: each query against its own positive
    assert result.thresholds == pytest.approx({"q1": 8 + math.log(0.5), "q2": 3 + math.log(0.5), "q3": 6 + math.log(0.5)})
    # q2's m2 (2.9) is within the ratio of its weak positive; q3's k1 (5.5) of its 6.0
    assert result.flagged == {"q1": ["n1"], "q2": ["m1", "m2"], "q3": ["k1"]}
    # a tighter ratio keeps q3's k1 (exp(5.5 - 6) = 0.61 <= 0.7) and q2's m2 (exp(-0.1) = 0.905 > 0.7 still flagged)
    tighter = filter_false_negatives(records, FilterConfig(rule="ratio", ratio=0.7))
    assert tighter.flagged == {"q1": ["n1"], "q2": ["m1", "m2"]}
    # shift-invariant: the same decisions on logits 10 higher
    assert filter_false_negatives(_records(shift=10.0), FilterConfig(rule="ratio", ratio=0.5)).flagged == result.flagged
    # a query without a positive is left alone; ratio <= 0 is refused
    lonely = _record("q9", {}, {"z1": 5.0})
    assert filter_false_negatives([*records, lonely], FilterConfig(rule="ratio", ratio=0.5)).flagged == result.flagged
    with pytest.raises(TrainingError, match="ratio"):
        FilterConfig(rule="ratio", ratio=0.0)
    with pytest.raises(TrainingError, match="rule"):
        FilterConfig(rule="percent")  # type: ignore[arg-type]


def test_filter_can_read_the_cross_encoder_score_instead_of_the_fused_one() -> None:
    # the fused score rates n1 like the positive; the cross-encoder alone does not, and m1 the other way round
    record = TrainingRecord(
        query_id="q", query="query q",
        positives=[Candidate(docid="p", relevance=1, teacher_score=2.0, cross_encoder_score=5.0)],
        negatives=[Candidate(docid="n1", relevance=0, teacher_score=1.99, cross_encoder_score=1.0),
                   Candidate(docid="m1", relevance=0, teacher_score=0.0, cross_encoder_score=4.99)],
    )
    assert filter_false_negatives([record], FilterConfig(rule="ratio", ratio=0.9)).flagged == {"q": ["n1"]}
    assert filter_false_negatives([record], FilterConfig(rule="ratio", ratio=0.9, score="cross_encoder")).flagged == {"q": ["m1"]}
    with pytest.raises(TrainingError, match="cross_encoder_score"):
        filter_false_negatives(_records(), FilterConfig(score="cross_encoder"))
