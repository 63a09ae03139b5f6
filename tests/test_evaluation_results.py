"""The md2pr-evaluate results JSON as a model (evaluation.results): its readers validate it, so a
renamed key is an error that names the field, not a blank cell in the experiment report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from evaluation.results import EvaluationReport
from pipeline.report import collect

REPORT = {
    "command": "md2pr-evaluate --retriever bm25 --retriever service",
    "machine": {"cpus": 2, "threads": 1},
    "dataset": "/data/scifact",
    "split": "test",
    "queries": 300,
    "depth": 1000,
    "relevance_level": 1,
    "systems": {
        "bm25": {"metrics": {"nDCG@10": 0.657, "R@1000": 0.98}, "config": {}, "seconds": 1.5},
        "service": {"metrics": {"nDCG@10": 0.645}, "config": {"depth": 100}, "seconds": 9.0, "omitted_metrics": ["R@1000"]},
    },
}


def test_a_report_reads_typed_with_the_service_depth() -> None:
    report = EvaluationReport.model_validate(REPORT)
    service = report.system("service")
    assert service is not None and service.omitted_metrics == ["R@1000"] and not service.is_rerank
    assert report.depth_of(service) == 100 and report.depth_of(report.systems["bm25"]) == 1000
    assert report.system("dense") is None  # two systems: no fallback to "the only one"
    assert report.machine.threads == 1


def test_a_renamed_key_fails_naming_the_field() -> None:
    broken = json.loads(json.dumps(REPORT))
    broken["systems"]["bm25"]["metric"] = broken["systems"]["bm25"].pop("metrics")
    with pytest.raises(ValidationError, match=r"systems\.bm25\.metrics"):
        EvaluationReport.model_validate(broken)


def test_the_experiment_report_lists_a_renamed_key_as_missing(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "eval").mkdir(parents=True)
    good = {**REPORT, "systems": {"bm25": REPORT["systems"]["bm25"]}}
    broken = json.loads(json.dumps(good))
    broken["systems"]["bm25"]["ndcg"] = broken["systems"]["bm25"].pop("metrics")
    (root / "eval" / "bm25.json").write_text(json.dumps(broken))
    report = collect(root)
    assert "BM25 evaluation: eval/bm25.json (not an md2pr-evaluate report: systems.bm25.metrics: Field required)" in report["missing"]
    assert not [row for row in report["rows"] if row["name"] == "bm25"]
    (root / "eval" / "bm25.json").write_text(json.dumps(good))
    rows = [row for row in collect(root)["rows"] if row["name"] == "bm25"]
    assert [row["metrics"] for row in rows] == [{"nDCG@10": 0.657, "R@1000": 0.98}]
