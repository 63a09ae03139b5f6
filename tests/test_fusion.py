"""Fusion maths on hand-made score lists."""

from __future__ import annotations

import pytest

from retrieval.fusion import FusionConfig, FusionConfigError, fuse

DENSE = [("a", 0.9), ("b", 0.5)]
BM25 = [("b", 10.0), ("c", 2.0)]


def test_zscore_fills_missing_with_the_side_minimum_and_breaks_ties_by_docid() -> None:
    # candidates a, b, c. dense: a .9, b .5, c filled .5 -> z = (+1.414, -0.707, -0.707)
    # bm25: a filled 2, b 10, c 2 -> z = (-0.707, +1.414, -0.707)
    # fused: a 0.707, b 0.707 (tie -> docid order), c -1.414
    hits = fuse(DENSE, BM25, FusionConfig(), top_k=10)
    assert [h.docid for h in hits] == ["a", "b", "c"]
    assert [round(h.score, 3) for h in hits] == [0.707, 0.707, -1.414]
    assert (hits[0].dense_score, hits[0].bm25_score) == (0.9, None)  # raw scores, None = not returned
    assert (hits[2].dense_score, hits[2].bm25_score) == (None, 2.0)


def test_weights_shift_the_order() -> None:
    hits = fuse(DENSE, BM25, FusionConfig(dense_weight=1.0, bm25_weight=2.0), top_k=10)
    assert [h.docid for h in hits] == ["b", "a", "c"]  # b: -0.707 + 2*1.414; a: 1.414 - 2*0.707
    only_dense = fuse(DENSE, BM25, FusionConfig(bm25_weight=0.0), top_k=10)
    assert [h.docid for h in only_dense][:1] == ["a"]


def test_a_retriever_returning_nothing() -> None:
    hits = fuse(DENSE, [], FusionConfig(), top_k=10)
    assert [h.docid for h in hits] == ["a", "b"] and all(h.bm25_score is None for h in hits)
    assert fuse([], [], FusionConfig(), top_k=10) == []


def test_equal_scores_on_one_side_contribute_nothing() -> None:
    hits = fuse([("x", 0.5), ("y", 0.5)], [("y", 3.0), ("x", 1.0)], FusionConfig(), top_k=2)
    assert [h.docid for h in hits] == ["y", "x"]  # dense has zero spread, BM25 decides


def test_rrf() -> None:
    # a: 1/61; b: 1/62 + 1/61; c: 1/62
    hits = fuse(DENSE, BM25, FusionConfig(method="rrf"), top_k=10)
    assert [h.docid for h in hits] == ["b", "a", "c"]
    assert hits[0].score == pytest.approx(1 / 62 + 1 / 61)


def test_depth_and_top_k_truncate() -> None:
    dense = [(f"d{i}", 1.0 - i / 100) for i in range(50)]
    hits = fuse(dense, BM25, FusionConfig(dense_depth=5, bm25_depth=1), top_k=3)
    assert len(hits) == 3
    assert not {"c", "d5"} & {h.docid for h in fuse(dense, BM25, FusionConfig(dense_depth=5, bm25_depth=1), top_k=100)}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dense_weight": -1.0}, "dense_weight"),
        ({"bm25_weight": 11.0}, "bm25_weight"),
        ({"dense_weight": 0.0, "bm25_weight": 0.0}, "both be 0"),
        ({"dense_depth": 0}, "dense_depth"),
        ({"bm25_depth": 5000}, "bm25_depth"),
        ({"method": "max"}, "method"),
    ],
)
def test_out_of_bounds_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(FusionConfigError, match=message):
        FusionConfig().override(**changes)


def test_dict_round_trip_and_unknown_keys() -> None:
    config = FusionConfig(dense_weight=0.7)
    assert FusionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(FusionConfigError, match="unknown"):
        FusionConfig.from_dict({"alpha": 1})


def test_fit_weights_follows_the_better_retriever() -> None:
    from retrieval.fusion import fit_weights

    qrels = {"q1": {"good": 1}, "q2": {"good2": 1}}
    # BM25 ranks the relevant passage first, dense ranks it last among three
    bm25 = {"q1": [("good", 9.0), ("x", 5.0), ("y", 1.0)], "q2": [("good2", 7.0), ("z", 6.0), ("w", 0.5)]}
    dense = {"q1": [("x", 0.9), ("y", 0.8), ("good", 0.1)], "q2": [("z", 0.9), ("w", 0.85), ("good2", 0.2)]}
    fit = fit_weights(qrels, dense, bm25, steps=4)
    assert len(fit.grid) == 5 and fit.objective == "nDCG@10"
    assert fit.best.bm25_weight > fit.best.dense_weight
    assert max(g["nDCG@10"] for g in fit.grid) == pytest.approx(1.0)
    swapped = fit_weights(qrels, bm25, dense, steps=4)  # now the dense side is the good one
    assert swapped.best.dense_weight > swapped.best.bm25_weight
    with pytest.raises(FusionConfigError, match="unknown objective"):
        fit_weights(qrels, dense, bm25, objective="P@3")


def test_fit_weights_with_an_unseen_subset_chooses_on_the_mean() -> None:
    from retrieval.fusion import fit_weights

    # three queries the dense side answers (their documents were seen in training), one only BM25 finds
    qrels = {f"s{i}": {f"good{i}": 1} for i in range(3)} | {"u": {"new": 1}}
    dense = {f"s{i}": [(f"good{i}", 0.9), ("x", 0.5), ("y", 0.1)] for i in range(3)}
    bm25 = {f"s{i}": [("x", 9.0), ("y", 5.0), (f"good{i}", 1.0)] for i in range(3)}
    dense["u"], bm25["u"] = [("x", 0.9), ("y", 0.8), ("new", 0.1)], [("new", 9.0), ("x", 5.0), ("y", 1.0)]
    whole = fit_weights(qrels, dense, bm25, steps=4)
    assert whole.best.dense_weight > whole.best.bm25_weight  # 3 of 4 queries favour dense
    balanced = fit_weights(qrels, dense, bm25, steps=4, unseen=["u"])
    assert balanced.objective == "nDCG@10 mean" and balanced.best.bm25_weight > balanced.best.dense_weight
    for point in balanced.grid:
        assert point["nDCG@10 mean"] == pytest.approx((point["nDCG@10"] + point["nDCG@10 unseen"]) / 2)
    assert balanced.best_objective == max(g["nDCG@10 mean"] for g in balanced.grid)
    with pytest.raises(FusionConfigError, match="empty"):
        fit_weights(qrels, dense, bm25, unseen=["not-a-query"])
