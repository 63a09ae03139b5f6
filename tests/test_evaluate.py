"""The evaluate CLI's hybrid mode and the dev subsets of a split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.datasets import in_dev_subset, load_dataset
from retrieval.errors import DatasetFormatError
from retrieval.evaluate import main as evaluate_main
from retrieval.paths import data_dir


def test_hybrid_evaluation_fuses_both_sides(tiny_index: Path, noveleval: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(noveleval), "--index", str(tiny_index), "--output", str(out), "--threads", "1"]
    assert evaluate_main([*argv, "--retriever", "bm25", "--retriever", "dense", "--retriever", "hybrid"]) == 0
    systems = json.loads(out.read_text())["systems"]
    assert systems["hybrid"]["config"]["fusion"]["method"] == "zscore"
    # all weight on BM25 reproduces BM25's ranking: fusion keeps each side's order
    assert evaluate_main([*argv, "--retriever", "bm25", "--retriever", "hybrid", "--dense-weight", "0", "--depth", "100",
                          "--bm25-depth", "100"]) == 0
    only_bm25 = json.loads(out.read_text())["systems"]
    assert only_bm25["hybrid"]["metrics"]["nDCG@10"] == pytest.approx(only_bm25["bm25"]["metrics"]["nDCG@10"])


def test_measures_deeper_than_the_ranking_are_left_out(tiny_index: Path, noveleval: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(noveleval), "--index", str(tiny_index), "--output", str(out), "--threads", "1"]
    assert evaluate_main([*argv, "--retriever", "bm25", "--retriever", "dense", "--depth", "60"]) == 0
    for system in json.loads(out.read_text())["systems"].values():
        assert set(system["metrics"]) == {"nDCG@10", "MRR@10", "R@50"}
        assert system["omitted_metrics"] == ["R@100", "R@1000"]
    assert evaluate_main([*argv, "--retriever", "bm25", "--depth", "1000"]) == 0
    assert "omitted_metrics" not in json.loads(out.read_text())["systems"]["bm25"]


def test_fusion_flags_out_of_bounds_are_one_line_errors(tiny_index: Path, noveleval: Path, capsys) -> None:
    code = evaluate_main(["--dataset", str(noveleval), "--index", str(tiny_index), "--retriever", "hybrid", "--bm25-weight", "-1"])
    assert code == 2 and "bm25_weight must be within" in capsys.readouterr().err


def test_dev_and_fit_subsets_partition_a_split() -> None:
    scifact = data_dir() / "scifact"
    if not scifact.is_dir():
        pytest.skip(f"shared data not found at {scifact}")
    train = load_dataset(scifact, "train")
    dev = load_dataset(scifact, "train:dev")
    fit = load_dataset(scifact, "train:fit")
    assert set(dev.queries).isdisjoint(fit.queries)
    assert set(dev.queries) | set(fit.queries) == set(train.queries)
    assert 0.1 < len(dev.queries) / len(train.queries) < 0.3
    assert set(dev.qrels) == set(dev.queries)
    assert in_dev_subset("1") == in_dev_subset("1")  # a pure function of the id
    with pytest.raises(DatasetFormatError, match="unknown subset"):
        load_dataset(scifact, "train:holdout")
