"""benchmarks/distill_seeds.py: the per-variant summary over seeds (hand-made runs) and the score-cache sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.distill_seeds import MEASURES, summarise, teacher_fingerprint, teacher_runs


def _test(full: float, unseen: float) -> dict:
    part = lambda v: {m: v for m in MEASURES}  # noqa: E731
    return {"dense": {"full": part(full), "unseen": part(unseen)}, "hybrid": {"full": part(full + 0.01), "unseen": part(unseen + 0.05)}}


def test_summary_gives_mean_and_sd_per_variant_and_per_iteration() -> None:
    runs = {
        f"kd2-s{seed}": {"seed": seed, "test": _test(full, unseen), "selected_dev": {"nDCG@10": 0.7}, "selected_epoch": 6,
                         "selected_iteration": it, "test_iterations": {"1": _test(full - 0.01, unseen)["dense"], "2": _test(full, unseen)["dense"]}}
        for seed, (full, unseen, it) in enumerate([(0.70, 0.60, 2), (0.72, 0.64, 1)])
    }
    runs["sup-s0"] = {"seed": 0, "test": _test(0.5, 0.4), "selected_dev": {"nDCG@10": 0.6}, "selected_epoch": 3, "selected_iteration": 1}
    summary = summarise(runs)
    kd2 = summary["kd2"]
    assert kd2["dense/full/nDCG@10"] == pytest.approx({"mean": 0.71, "sd": 0.0141421356})
    assert kd2["hybrid/unseen/nDCG@10"]["mean"] == pytest.approx(0.67)
    assert kd2["iterations"]["1"]["full"]["mean"] == pytest.approx(0.70) and kd2["iterations"]["2"]["unseen"]["mean"] == pytest.approx(0.62)
    assert kd2["selected_iterations"] == [2, 1] and kd2["seeds"] == [0, 1]
    assert summary["sup"]["dense/full/nDCG@10"] == {"mean": 0.5, "sd": None} and "iterations" not in summary["sup"]


def test_score_cache_sources_are_the_runs_with_teacher_annotations(tmp_path: Path) -> None:
    for name, fingerprint, annotated in (("kd-s0", "abc", True), ("sup-s0", None, True), ("kd-s1", "abc", False)):
        run = tmp_path / name
        (run / "iter-01").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"teacher": {"fingerprint": fingerprint}}))
        if annotated:
            (run / "iter-01" / "annotated.jsonl").write_text("{}\n")
    assert teacher_runs(tmp_path) == [tmp_path / "kd-s0"]


def test_teacher_fingerprint_is_read_from_the_run_config(tmp_path: Path) -> None:
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / "config.json").write_text(json.dumps({"teacher": {"source": "t", "fingerprint": "221eb848"}}))
    (tmp_path / "sup").mkdir()
    (tmp_path / "sup" / "config.json").write_text(json.dumps({"teacher": None}))
    assert teacher_fingerprint(tmp_path / "kd") == "221eb848"
    assert teacher_fingerprint(tmp_path / "sup") is None
