"""Evaluation (ir-measures wrapper), TREC run I/O and the results table."""

from __future__ import annotations

import math
import re

import pytest
from ir_measures import RR, R, nDCG

from retrieval.errors import DatasetFormatError
from retrieval.metrics import (
    DEFAULT_MEASURES,
    evaluate_run,
    format_table,
    per_query,
    read_trec_run,
    write_trec_run,
)

# q1 has two relevant docs (d1, d3); q2 one (d4); q3 one (d5) but is absent from the run;
# q9 is in the run only and must be ignored.
QRELS = {
    "q1": {"d1": 1, "d2": 0, "d3": 1},
    "q2": {"d4": 1},
    "q3": {"d5": 1},
}
RUN = {
    "q1": {"d2": 3.0, "d1": 2.0, "d9": 1.5, "d3": 1.0},  # ranking: d2(0) d1(1) d9(unjudged) d3(1)
    "q2": {"d4": 5.0, "d6": 1.0},  # ranking: d4(1) d6(unjudged)
    "q9": {"d1": 1.0},
}
MEASURES = {"nDCG@10": nDCG @ 10, "MRR@10": RR @ 10, "R@2": R @ 2, "R@50": R @ 50}

# q1: DCG@10 = 1/log2(1+2) + 1/log2(1+4)          (relevant at ranks 2 and 4)
#           = 0.630930 + 0.430677 = 1.061606
#     IDCG@10 = 1/log2(2) + 1/log2(3) = 1 + 0.630930 = 1.630930;  nDCG@10 = 0.650921
#     RR@10 = 1/2 (first relevant at rank 2); R@2 = 1/2 (d1 of {d1, d3}); R@50 = 2/2
# q2: d4 at rank 1 -> nDCG = RR = R@2 = R@50 = 1
# q3: absent from the run -> 0 everywhere
Q1_NDCG = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))  # = 0.650921
EXPECTED_PER_QUERY = {
    "q1": {"nDCG@10": Q1_NDCG, "MRR@10": 0.5, "R@2": 0.5, "R@50": 1.0},
    "q2": {"nDCG@10": 1.0, "MRR@10": 1.0, "R@2": 1.0, "R@50": 1.0},
    "q3": {"nDCG@10": 0.0, "MRR@10": 0.0, "R@2": 0.0, "R@50": 0.0},
}


def test_per_query_matches_hand_computed_values() -> None:
    got = per_query(QRELS, RUN, MEASURES)
    assert set(got) == {"q1", "q2", "q3"}  # q9 (no qrels) ignored, q3 (no ranking) kept
    for qid, expected in EXPECTED_PER_QUERY.items():
        assert got[qid] == pytest.approx(expected), qid


def test_evaluate_run_averages_over_all_qrels_queries() -> None:
    got = evaluate_run(QRELS, RUN, MEASURES)
    # Means over 3 queries, the missing q3 counting as 0:
    # nDCG = (0.650921 + 1 + 0) / 3 = 0.550307; RR = (0.5 + 1 + 0) / 3 = 0.5;
    # R@2 = (0.5 + 1 + 0) / 3 = 0.5; R@50 = (1 + 1 + 0) / 3 = 0.666667
    assert got == pytest.approx(
        {"nDCG@10": (Q1_NDCG + 1) / 3, "MRR@10": 0.5, "R@2": 0.5, "R@50": 2 / 3}
    )
    assert got["nDCG@10"] == pytest.approx(0.550307, abs=1e-6)


def test_query_missing_from_run_counts_as_zero() -> None:
    only_q2 = {"q2": RUN["q2"]}
    assert evaluate_run(QRELS, only_q2, MEASURES)["MRR@10"] == pytest.approx(1 / 3)
    # An empty ranking is the same as a missing query; an empty run scores 0 throughout.
    assert evaluate_run(QRELS, {**only_q2, "q1": {}}, MEASURES)["MRR@10"] == pytest.approx(1 / 3)
    assert set(evaluate_run(QRELS, {}, MEASURES).values()) == {0.0}


def test_default_measures_and_string_measures() -> None:
    got = evaluate_run(QRELS, RUN)
    assert list(got) == ["nDCG@10", "MRR@10", "R@50", "R@100", "R@1000"] == list(DEFAULT_MEASURES)
    assert got["MRR@10"] == pytest.approx(0.5)
    assert got["R@1000"] == pytest.approx(2 / 3)
    by_string = evaluate_run(QRELS, RUN, ["nDCG@10", "RR@10"])
    assert by_string == pytest.approx({"nDCG@10": (Q1_NDCG + 1) / 3, "RR@10": 0.5})


def test_relevance_level_applies_to_binary_measures_only() -> None:
    qrels = {"g": {"a": 2, "b": 1, "c": 0}}
    run = {"g": {"b": 3.0, "a": 2.0, "c": 1.0}}  # ranking: b(1) a(2) c(0)
    measures = {"nDCG@10": nDCG @ 10, "MRR@10": RR @ 10, "R@1": R @ 1, "R@2": R @ 2}
    # nDCG (linear gains, independent of the level):
    #   DCG = 1/log2(2) + 2/log2(3) = 2.261860; IDCG = 2/log2(2) + 1/log2(3) = 2.630930;
    #   nDCG@10 = 2.261860 / 2.630930 = 0.859719
    ndcg = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    # level 1: relevant {a, b}: RR = 1 (b at 1), R@1 = 1/2, R@2 = 2/2
    assert evaluate_run(qrels, run, measures) == pytest.approx(
        {"nDCG@10": ndcg, "MRR@10": 1.0, "R@1": 0.5, "R@2": 1.0}
    )
    # level 2: relevant {a}: RR = 1/2 (a at 2), R@1 = 0/1, R@2 = 1/1
    assert evaluate_run(qrels, run, measures, relevance_level=2) == pytest.approx(
        {"nDCG@10": ndcg, "MRR@10": 0.5, "R@1": 0.0, "R@2": 1.0}
    )
    with pytest.raises(ValueError):
        evaluate_run(qrels, run, measures, relevance_level=0)


def test_trec_run_round_trip_rank_order_and_tie_break(tmp_path) -> None:
    run = {
        "q2": {"b": 1.0, "a": 1.0, "c": 2.5},  # tie between a and b -> docid order
        "q1": {"x": 0.1234567890123, "y": -3.0},
    }
    path = tmp_path / "runs" / "bm25.trec"
    write_trec_run(path, run, tag="bm25")
    assert path.read_text().splitlines() == [
        "q2 Q0 c 1 2.5 bm25",
        "q2 Q0 a 2 1.0 bm25",
        "q2 Q0 b 3 1.0 bm25",
        "q1 Q0 x 1 0.1234567890123 bm25",
        "q1 Q0 y 2 -3.0 bm25",
    ]
    back = read_trec_run(path)
    assert back == run
    assert list(back) == ["q2", "q1"]


def test_write_trec_run_rejects_whitespace_in_ids(tmp_path) -> None:
    with pytest.raises(ValueError, match="tag"):
        write_trec_run(tmp_path / "r.trec", {"q": {"d": 1.0}}, tag="my run")
    with pytest.raises(ValueError, match="docid"):
        write_trec_run(tmp_path / "r.trec", {"q": {"d 1": 1.0}}, tag="t")


@pytest.mark.parametrize(
    "bad_line",
    ["q1 Q0 d2 2 not-a-score t", "q1 Q0 d2 2 1.0", "q1 Q0 d2 two 1.0 t", "q1 Q0 d1 2 0.5 t"],
    ids=["score", "columns", "rank", "duplicate"],
)
def test_read_trec_run_malformed_line_names_file_and_line(tmp_path, bad_line: str) -> None:
    path = tmp_path / "bad.trec"
    path.write_text(f"q1 Q0 d1 1 2.0 t\n\n{bad_line}\n")
    with pytest.raises(DatasetFormatError, match=re.escape(f"{path}:3:")):
        read_trec_run(path)


def test_read_trec_run_missing_file(tmp_path) -> None:
    with pytest.raises(DatasetFormatError, match="not found"):
        read_trec_run(tmp_path / "nope.trec")


def test_format_table() -> None:
    table = format_table({"bm25": {"nDCG@10": 0.65685, "MRR@10": 0.5}, "dense": {"nDCG@10": 1.0}})
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["system", "nDCG@10", "MRR@10"]
    assert set(lines[1]) <= {"|", "-", ":"}
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["bm25", "0.6569", "0.5000"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["dense", "1.0000", ""]
    assert len({len(line) for line in lines}) == 1  # aligned columns
