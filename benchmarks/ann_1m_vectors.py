"""The 1,000,000 real-shaped vectors of ``benchmarks/ann_1m.py`` (its ``prepare`` stage): how they are
made from the real SciFact passage vectors (the recipe is in ``ann_1m.py``'s docstring), the encoded
SciFact claims, their exact top-10 over the 1M, and the docids and passage store every built
family shares. Everything is cached under ``artifacts/bench/ann1m/``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from retrieval.paths import artifacts_dir, data_dir

WORK = artifacts_dir() / "bench" / "ann1m"
BASE_INDEX = artifacts_dir() / "experiments" / "scifact-cpu" / "indexes" / "base"
NEIGHBOURS = 20
SHARD_ROWS = 65536


def seed_neighbours(seeds: np.ndarray, k: int) -> np.ndarray:
    """Each seed's ``k`` nearest other seeds by inner product: ``[n, k]`` row ids (self excluded)."""
    scores = seeds @ seeds.T  # [n, n]
    np.fill_diagonal(scores, -np.inf)
    k = min(k, len(seeds) - 1)
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def noise_factor(seeds: np.ndarray) -> np.ndarray:
    """``L [dim, dim]`` with ``L L^T`` = the seeds' covariance (``z @ L.T`` is noise shaped like the data)."""
    centred = seeds - seeds.mean(axis=0, keepdims=True)
    cov = centred.T @ centred / max(1, len(seeds) - 1)  # [dim, dim]
    values, vectors = np.linalg.eigh(cov.astype(np.float64))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))).astype(np.float32)


def perturbed_vectors(
    seeds: np.ndarray, neighbours: np.ndarray, factor: np.ndarray, count: int, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """``count`` unit vectors ``normalise(w x_i + (1 - w) x_j + noise L z)`` (see the module docstring).

    ``seeds [n, dim]`` unit float32, ``neighbours [n, k]`` from :func:`seed_neighbours`,
    ``factor [dim, dim]`` from :func:`noise_factor`. Returns ``[count, dim]`` float32, unit norm.
    """
    n, dim = seeds.shape
    first = rng.integers(0, n, count)  # [count]
    second = neighbours[first, rng.integers(0, neighbours.shape[1], count)]  # [count]
    w = rng.uniform(0.0, 1.0, size=(count, 1)).astype(np.float32)  # [count, 1]
    z = rng.standard_normal(size=(count, dim), dtype=np.float32)  # [count, dim]
    out = w * seeds[first] + (1.0 - w) * seeds[second] + noise * (z @ factor.T)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32, copy=False)


def staging_dir(count: int) -> Path:
    return WORK / f"vectors-{count}"


def prepare(count: int, noise: float, base_index: Path) -> dict:
    """Shards of ``count`` perturbed vectors, encoded queries, exact top-10 and a shared docid/store pair."""
    from index_build.quality import RECALL_K, exact_topk
    from index_build.shards import ShardStore, ShardVectors
    from retrieval.datasets import read_beir_qrels, read_beir_queries
    from retrieval.encoder import DualEncoder
    from retrieval.index import DOCIDS_FILE, IndexArtifact
    from retrieval.index_versions import resolve_index_dir
    from retrieval.passage_store import STORE_FILE, PassageStoreWriter
    from retrieval.types import Passage

    staging = staging_dir(count)
    info_path = WORK / f"prepared-{count}.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    base = IndexArtifact.open(resolve_index_dir(base_index))
    seeds = base.all_vectors()  # [5183, 384]
    encoder_source = base.manifest.encoder.source
    base.close()
    t0 = time.monotonic()
    neighbours = seed_neighbours(seeds, NEIGHBOURS)
    factor = noise_factor(seeds)
    shutil.rmtree(staging, ignore_errors=True)
    key = {"corpus": "ann1m-perturbed-scifact", "encoder": encoder_source, "dimension": seeds.shape[1], "batch_size": 0, "shard_size": SHARD_ROWS, "noise": noise}
    store = ShardStore.create(staging, {**key, "count": count})
    rng = np.random.default_rng(0)
    for number, start in enumerate(range(0, count, SHARD_ROWS)):
        n = min(SHARD_ROWS, count - start)
        vectors = perturbed_vectors(seeds, neighbours, factor, n, noise, rng)
        store.record(number, [Passage(f"p{start + i}", "", "") for i in range(n)], f"perturbed-{number}", vectors)
    store.finish_reading(count, len(store.state.shards))
    store.release()
    make_s = time.monotonic() - t0

    scifact = data_dir() / "scifact"
    texts = read_beir_queries(scifact / "queries.jsonl")
    split = {name: [qid for qid in read_beir_qrels(scifact / "qrels" / f"{name}.tsv") if qid in texts] for name in ("train", "test")}
    encoder = DualEncoder.from_pretrained(encoder_source)
    q = {name: encoder.encode_queries([texts[qid] for qid in ids], batch_size=64) for name, ids in split.items()}  # [q, 384]

    source = ShardVectors(ShardStore(staging, store.state), seeds.shape[1])
    t0 = time.monotonic()
    truth = exact_topk(source, np.ascontiguousarray(q["test"]), np.full(len(q["test"]), -1, dtype=np.int64), RECALL_K)
    truth_s = time.monotonic() - t0
    np.savez(WORK / f"queries-{count}.npz", train=q["train"], test=q["test"], truth_rows=truth.rows, truth_scores=truth.scores)

    common = WORK / f"common-{count}"
    shutil.rmtree(common, ignore_errors=True)
    common.mkdir(parents=True)
    (common / DOCIDS_FILE).write_text("".join(f"p{i}\n" for i in range(count)))
    writer = PassageStoreWriter(common / STORE_FILE)
    for start in range(0, count, 100_000):
        writer.add([Passage(f"p{i}", "", "") for i in range(start, min(count, start + 100_000))])
    writer.close()

    # how the synthetic set compares with the real one: the test queries' top-1 / top-10 scores
    real_scores = np.sort(q["test"] @ seeds.T, axis=1)[:, ::-1]  # [300, 5183]
    seed_cos = (seeds[:2000] @ seeds.T)
    np.fill_diagonal(seed_cos[:, :2000], -np.inf)
    sample = source.take(np.arange(0, 2000))
    sample_cos = sample @ source.take(np.arange(2000, 52_000)).T  # [2000, 50k]
    info = {
        "count": count,
        "dimension": int(seeds.shape[1]),
        "seeds": int(len(seeds)),
        "seed_source": f"{base_index} (Flat index of the SciFact corpus, {encoder_source})",
        "noise": noise,
        "neighbours": NEIGHBOURS,
        "recipe": (
            "v = normalise(w x_i + (1-w) x_j + noise * L z): x_i a uniformly drawn real SciFact passage vector, "
            f"x_j one of its {NEIGHBOURS} nearest real passages, w ~ U(0,1), z ~ N(0, I), L L^T = covariance of the real vectors; seed 0"
        ),
        "queries": {
            "gate": f"{len(q['train'])} SciFact train claims, encoded as queries",
            "measured": f"{len(q['test'])} SciFact test claims, encoded as queries",
            "encoder": encoder_source,
        },
        "make_s": round(make_s, 1),
        "exact_truth_s": round(truth_s, 1),
        "shape_check": {
            "test_query_top1_score_real_5183": round(float(np.median(real_scores[:, 0])), 4),
            "test_query_top10_score_real_5183": round(float(np.median(real_scores[:, 9])), 4),
            "test_query_top1_score_synthetic_1m": round(float(np.median(truth.scores[:, 0])), 4),
            "test_query_top10_score_synthetic_1m": round(float(np.median(truth.scores[:, 9])), 4),
            "passage_nn_cosine_real_5183": round(float(np.median(seed_cos.max(axis=1))), 4),
            "passage_nn_cosine_synthetic_in_50k": round(float(np.median(sample_cos.max(axis=1))), 4),
            "passage_mean_cosine_real": round(float(np.mean(seeds[:2000] @ seeds[2000:4000].T)), 4),
            "passage_mean_cosine_synthetic": round(float(np.mean(sample[:, :] @ source.take(np.arange(2000, 4000)).T)), 4),
        },
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info
