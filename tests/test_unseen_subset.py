"""benchmarks/unseen_subset.py: the written directory keeps only the unseen-positive queries' qrels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.unseen_subset import main, write_unseen_subset


def _dataset(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": d}) + "\n" for d in "abcd"))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": q}) + "\n" for q in ("q1", "q2", "q3", "t1")))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nt1\ta\t1\n")
    # q1's positive a is a train positive; q2 has a and b; q3 only c (unseen)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\ta\t1\nq2\tb\t1\nq3\tc\t1\n")
    return root


def test_only_queries_with_no_seen_positive_are_kept(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    out = tmp_path / "unseen"
    assert write_unseen_subset(data, "test", "train", out) == 1
    assert (out / "qrels" / "test.tsv").read_text().splitlines() == ["query-id\tcorpus-id\tscore", "q3\tc\t1"]
    assert (out / "corpus.jsonl").is_symlink() and (out / "qrels" / "train.tsv").read_text() == (data / "qrels" / "train.tsv").read_text()
    assert write_unseen_subset(data, "test", "train", out) == 1  # rewriting the same directory works


def test_a_missing_dataset_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dataset", str(tmp_path / "none"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
