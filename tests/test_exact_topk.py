"""index_build.quality.exact_topk (FAISS's knn_ground_truth) against a plain numpy reference on random data."""

from __future__ import annotations

import numpy as np
import pytest

from index_build.quality import ArrayVectors, exact_topk


def _reference(vectors: np.ndarray, queries: np.ndarray, self_rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All scores at once, each query's own row set to -inf, then a full sort (the streaming code it replaced did the same per chunk)."""
    scores = queries @ vectors.T
    own = self_rows >= 0
    scores[np.nonzero(own)[0], self_rows[own]] = -np.inf
    k = min(k, len(vectors) - (1 if own.any() else 0))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("chunk", [7, 64, 1000])
@pytest.mark.parametrize("kind", ["external", "self", "mixed"])
def test_exact_topk_matches_the_numpy_reference(chunk: int, kind: str) -> None:
    rng = np.random.default_rng(chunk)
    vectors = _unit(rng, 500, 32)
    if kind == "external":
        queries, self_rows = _unit(rng, 40, 32), np.full(40, -1, dtype=np.int64)
    else:
        self_rows = rng.choice(500, size=40, replace=False).astype(np.int64)
        queries = vectors[self_rows].copy()
        if kind == "mixed":
            self_rows[::3] = -1  # a third are external queries (that still equal a stored vector)
    truth = exact_topk(ArrayVectors(vectors, chunk), queries, self_rows, 10)
    rows, scores = _reference(vectors, queries, self_rows, 10)
    assert truth.rows.shape == (40, 10) and truth.rows.dtype == np.int64
    np.testing.assert_array_equal(truth.rows, rows)
    np.testing.assert_allclose(truth.scores, scores, atol=1e-5)
    if kind != "external":
        assert not (truth.rows == truth.self_rows[:, None]).any()  # a query never finds its own row


def test_exact_topk_caps_k_at_the_rows_there_are() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 6, 8)
    truth = exact_topk(ArrayVectors(vectors, 4), vectors[:2].copy(), np.array([0, 1]), 10)
    rows, _ = _reference(vectors, vectors[:2].copy(), np.array([0, 1]), 10)
    assert truth.rows.shape == (2, 5)
    np.testing.assert_array_equal(truth.rows, rows)
