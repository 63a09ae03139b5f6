"""The helpers of ``benchmarks/ann_1m.py``: how its 1M real-shaped vectors are made, and the smaps reader.

The benchmark itself (1M vectors, minutes per family) is run by hand; these check the pure
pieces on small arrays.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ann():
    spec = importlib.util.spec_from_file_location("ann_1m", ROOT / "benchmarks" / "ann_1m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32) + 0.5  # a shared direction, as real embeddings have
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_seed_neighbours_are_the_nearest_others(ann) -> None:
    seeds = _unit(np.random.default_rng(0), 60, 16)
    got = ann.seed_neighbours(seeds, 5)  # [60, 5]
    scores = seeds @ seeds.T
    np.fill_diagonal(scores, -np.inf)
    expected = np.argsort(-scores, axis=1)[:, :5]
    assert got.shape == (60, 5)
    assert all(set(g) == set(e) for g, e in zip(got.tolist(), expected.tolist()))
    assert not (got == np.arange(60)[:, None]).any()


def test_noise_factor_reproduces_the_seed_covariance(ann) -> None:
    seeds = _unit(np.random.default_rng(1), 500, 12)
    factor = ann.noise_factor(seeds)  # [12, 12]
    np.testing.assert_allclose(factor @ factor.T, np.cov(seeds, rowvar=False), atol=1e-5)


def test_perturbed_vectors_are_unit_deterministic_and_near_their_seeds(ann) -> None:
    seeds = _unit(np.random.default_rng(2), 200, 32)
    neighbours = ann.seed_neighbours(seeds, 4)
    factor = ann.noise_factor(seeds)
    out = ann.perturbed_vectors(seeds, neighbours, factor, 1000, 0.6, np.random.default_rng(3))  # [1000, 32]
    again = ann.perturbed_vectors(seeds, neighbours, factor, 1000, 0.6, np.random.default_rng(3))
    assert out.shape == (1000, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, again)
    nearest_seed = (out @ seeds.T).max(axis=1)  # [1000]
    shuffled = _unit(np.random.default_rng(4), 1000, 32)  # unrelated vectors with the same shared direction
    assert np.median(nearest_seed) > np.median((shuffled @ seeds.T).max(axis=1)) + 0.1
    assert np.median(nearest_seed) < 0.99  # perturbed, not copies of the seeds


def test_without_noise_each_vector_lies_between_a_seed_and_one_of_its_neighbours(ann) -> None:
    seeds = _unit(np.random.default_rng(5), 50, 8)
    neighbours = ann.seed_neighbours(seeds, 3)
    out = ann.perturbed_vectors(seeds, neighbours, ann.noise_factor(seeds), 200, 0.0, np.random.default_rng(6))
    rng = np.random.default_rng(6)
    first = rng.integers(0, 50, 200)
    second = neighbours[first, rng.integers(0, 3, 200)]
    for v, i, j in zip(out, first, second):
        basis = np.stack([seeds[i], seeds[j]], axis=1)  # [8, 2]
        coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
        np.testing.assert_allclose(basis @ coef, v, atol=1e-5)
        assert (coef >= -1e-6).all()  # a convex mix (then normalised), not an extrapolation


def test_smaps_rollup_reads_this_process(ann) -> None:
    rollup = ann.smaps_rollup(os.getpid())
    assert rollup["Rss"] > 0 and 0 < rollup["Pss"] <= rollup["Rss"]
    assert {"Private_Clean", "Private_Dirty", "Shared_Clean"} <= set(rollup)
