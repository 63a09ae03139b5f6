"""index_build.quality.run_gate's tuning rule: the chosen value's recall must reach the target with a margin.

A real FAISS IVF index over random unit vectors; each query's recall@10 at every nprobe is
computed here independently (FAISS search at that nprobe, numpy exact top-10), and the target
is set to the mean recall of one ladder step, so the point estimate reaches it there while its
one-sided 95% lower bound does not.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index_build.quality import Z_95, ArrayVectors, GroundTruth, exact_topk, per_query_recall, recall_at_k, recall_lower_95, run_gate
from retrieval.index import describe_factory

DIM, COUNT, QUERIES, NLIST = 16, 2000, 60, 16


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def ivf() -> tuple[faiss.Index, ArrayVectors, GroundTruth, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, COUNT), _unit(rng, QUERIES)
    index = faiss.index_factory(DIM, f"IVF{NLIST},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    source = ArrayVectors(vectors, 500)
    truth = exact_topk(source, queries, np.full(QUERIES, -1, dtype=np.int64), 10)
    return index, source, truth, queries


def _independent_recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, nprobe: int) -> np.ndarray:
    """Per-query recall@10 at ``nprobe``: FAISS's rows against numpy's exact top-10 (random floats: no ties)."""
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    _, found = index.search(queries, 10, params=params)
    return np.array([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])


def test_per_query_recall_is_what_recall_at_k_averages(ivf) -> None:
    index, source, truth, queries = ivf
    for nprobe in (1, 4):
        per_query = per_query_recall(index, truth, source, {"nprobe": nprobe})
        expected = _independent_recall(index, source.vectors, queries, nprobe)
        np.testing.assert_allclose(per_query, expected)
        assert recall_at_k(index, truth, source, {"nprobe": nprobe}) == pytest.approx(expected.mean())
    assert per_query.std() > 0  # the recall varies over queries: there is an error to allow for


def test_lower_bound_is_mean_minus_z_standard_errors() -> None:
    values = np.array([1.0, 0.8, 0.9, 0.7, 1.0])
    expected = values.mean() - 1.645 * values.std(ddof=1) / np.sqrt(5)
    assert Z_95 == 1.645 and recall_lower_95(values) == pytest.approx(expected)
    assert recall_lower_95(np.ones(40)) == 1.0  # no spread: the bound is the mean
    assert recall_lower_95(np.array([0.7])) == 0.7


def test_tuned_value_needs_the_lower_bound_to_reach_the_target(ivf) -> None:
    index, source, truth, queries = ivf
    info = describe_factory(DIM, f"IVF{NLIST},Flat")
    curve = {n: _independent_recall(index, source.vectors, queries, n) for n in (1, 2, 4, 8, 16)}
    means = {n: r.mean() for n, r in curve.items()}
    lower = {n: r.mean() - 1.645 * r.std(ddof=1) / np.sqrt(len(r)) for n, r in curve.items()}
    target = means[8] - 1e-9  # the mean at nprobe 8 reaches it ...
    assert max(means[1], means[2], means[4]) < target  # ... and no smaller step's does
    assert lower[8] < target - 0.005  # ... but its lower bound does not
    assert lower[16] >= target  # every list probed: recall 1 on every query

    result = run_gate(index, info, truth, source, {}, tune="nprobe", target_recall=target)
    assert result.params == {"nprobe": 16}  # the old rule (mean >= target) stopped at 8
    assert result.recall == pytest.approx(means[16]) and result.recall_lower_95 == pytest.approx(lower[16])
    swept = {step["nprobe"]: step for step in result.sweep}
    assert sorted(swept) == [1, 2, 4, 8, 16]
    for n, step in swept.items():
        assert step["recall"] == pytest.approx(means[n], abs=1e-4)
        assert step["recall_lower_95"] == pytest.approx(lower[n], abs=1e-4)
    quality = result.as_manifest(0.9, "test queries", False)
    assert quality["recall_lower_95"] == pytest.approx(lower[16], abs=1e-4) and quality["passed"]


def test_a_target_the_bound_reaches_early_stops_there(ivf) -> None:
    index, source, truth, queries = ivf
    info = describe_factory(DIM, f"IVF{NLIST},Flat")
    r4 = _independent_recall(index, source.vectors, queries, 4)
    target = r4.mean() - 1.645 * r4.std(ddof=1) / np.sqrt(len(r4)) - 1e-9
    result = run_gate(index, info, truth, source, {}, tune="nprobe", target_recall=target)
    assert result.params == {"nprobe": 4} and [s["nprobe"] for s in result.sweep] == [1, 2, 4]


def test_untuned_gate_records_the_bound_and_passed_stays_on_the_mean(ivf) -> None:
    index, source, truth, queries = ivf
    info = describe_factory(DIM, f"IVF{NLIST},Flat")
    r2 = _independent_recall(index, source.vectors, queries, 2)
    result = run_gate(index, info, truth, source, {"nprobe": 2})
    assert result.sweep == [] and result.params == {"nprobe": 2}
    assert result.recall == pytest.approx(r2.mean()) and result.recall_lower_95 < result.recall
    quality = result.as_manifest(r2.mean() - 1e-9, "test queries", False)
    assert quality["passed"]  # the mean reaches the minimum; the bound is recorded, not gated on
    assert quality["recall_lower_95"] == pytest.approx(r2.mean() - 1.645 * r2.std(ddof=1) / np.sqrt(len(r2)), abs=1e-4)
