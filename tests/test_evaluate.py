"""The evaluate CLI's hybrid mode and the dev subsets of a split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.datasets import in_dev_subset, load_dataset
from retrieval.errors import DatasetFormatError
from evaluation.evaluate import main as evaluate_main
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
    assert [in_dev_subset(q) for q in ("1", "3", "6", "9", "15")] == [False, False, True, True, True]  # pinned: a pure function of the id
    with pytest.raises(DatasetFormatError, match="unknown subset"):
        load_dataset(scifact, "train:holdout")


def _query_tower_student(tiny_model_dir: Path, directory: Path, paired_with: str | None) -> Path:
    """The tiny encoder with its weights nudged (a new fingerprint), saved, paired with ``paired_with``."""
    import torch

    from retrieval.encoder import DualEncoder
    from retrieval.pairing import write_pairing

    encoder = DualEncoder.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(torch.randn_like(p) * 0.05, alpha=1.0)
    encoder.save_pretrained(directory)
    if paired_with is not None:
        write_pairing(directory, str(tiny_model_dir), paired_with, "index", DualEncoder.from_pretrained(directory).fingerprint)
    return directory


def test_query_tower_student_searches_the_index_it_pairs_with(
    tiny_index: Path, noveleval: Path, tiny_model_dir: Path, tmp_path: Path, capsys
) -> None:
    import torch

    from retrieval.encoder import DualEncoder

    torch.manual_seed(0)
    base = DualEncoder.from_pretrained(tiny_model_dir).fingerprint
    student = _query_tower_student(tiny_model_dir, tmp_path / "student", paired_with=base)
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(noveleval), "--index", str(tiny_index), "--retriever", "dense", "--output", str(out), "--threads", "1"]
    assert evaluate_main(argv) == 0
    before = json.loads(out.read_text())["systems"]["dense"]
    assert evaluate_main([*argv, "--query-encoder", str(student)]) == 0
    after = json.loads(out.read_text())["systems"]["dense"]
    assert after["config"]["query_encoder"]["fingerprint"] == DualEncoder.from_pretrained(student).fingerprint != base
    assert after["config"]["encoder"]["fingerprint"] == base  # the index's passages are the base encoder's
    assert after["metrics"] != before["metrics"]  # the student's queries rank differently
    # a student without pairing.json is a two-tower model: it pairs only with an index of its own
    unpaired = _query_tower_student(tiny_model_dir, tmp_path / "unpaired", paired_with=None)
    assert evaluate_main([*argv, "--query-encoder", str(unpaired)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "pairs with passages of" in err


def test_unseen_positive_subset_is_measured_beside_the_full_split(tmp_path: Path) -> None:
    scifact = data_dir() / "scifact"
    if not scifact.is_dir():
        pytest.skip(f"shared data not found at {scifact}")
    out = tmp_path / "eval.json"
    argv = ["--dataset", str(scifact), "--split", "test", "--retriever", "bm25", "--depth", "100", "--output", str(out),
            "--threads", "1", "--bm25-stemmer", "none"]  # unstemmed: the BM25 issue 14 measured
    assert evaluate_main([*argv, "--unseen-from", "train"]) == 0
    report = json.loads(out.read_text())
    assert report["unseen_positive"] == {"from": "train", "queries": 104}
    bm25 = report["systems"]["bm25"]
    assert set(bm25["metrics_unseen"]) == set(bm25["metrics"])
    assert bm25["metrics_unseen"]["nDCG@10"] != bm25["metrics"]["nDCG@10"]
    assert bm25["metrics_unseen"]["nDCG@10"] == pytest.approx(0.6760, abs=5e-4)  # issue 14's BM25 figure on the subset
    # every test query has a positive among test's own positives: an empty subset is a one-line error
    assert evaluate_main([*argv, "--unseen-from", "test"]) == 2
