"""benchmarks/render_results.py: an ``md2pr-evaluate --unseen-from`` report shows its unseen-positive columns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _render_evaluation():  # noqa: ANN202  (the renderer's function, loaded by path as the script is run)
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render_evaluation


def _report(unseen: bool) -> dict:
    system = {"metrics": {"nDCG@10": 0.75, "MRR@10": 0.7, "R@100": 0.9}, "kind": "rerank", "config": {},
              "rerank": {"first_stage": "dense", "depth": 100, "score": "cross_encoder",
                         "cross_encoder": {"head": "mean", "max_length": 128}}}
    report = {"command": "md2pr-evaluate ...", "machine": {"cpus": 2, "threads": 2}, "dataset": "data/scifact",
              "split": "test", "queries": 300, "depth": 1000, "systems": {"rerank-dense": system}}
    if unseen:
        system["metrics_unseen"] = {"nDCG@10": 0.6512, "MRR@10": 0.61, "R@100": 0.88}
        report["unseen_positive"] = {"from": "train", "queries": 104}
    return report


@pytest.mark.skipif(not (ROOT / "benchmarks").is_dir(), reason="no benchmarks/ here")
def test_unseen_columns_appear_only_for_reports_that_measured_them() -> None:
    render = _render_evaluation()
    with_unseen = "\n".join(render(_report(True), "x.json"))
    assert "the 104 test queries none of whose positives is a train positive" in with_unseen
    header = next(line for line in with_unseen.splitlines() if line.startswith("| system"))
    assert header.endswith("| nDCG@10 *unseen* | MRR@10 *unseen* | R@100 *unseen* |")
    row = next(line for line in with_unseen.splitlines() if line.startswith("| rerank-dense"))
    assert row.endswith("| 0.6512 | 0.6100 | 0.8800 |")
    published = next(line for line in with_unseen.splitlines() if "(published)" in line)
    assert published.count("|") == header.count("|")
    without = "\n".join(render(_report(False), "x.json"))
    assert "unseen" not in without
