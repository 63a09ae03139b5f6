"""Teacher annotation: scores and attention maps written into the training file, resumable, readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.cross_encoder import (
    CrossEncoder,
    TeacherFusion,
    teacher_scores,
    update_config,
)
from training.annotate import load_attention
from training.annotate import main as annotate_main
from training.data import load_training_file


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_index: Path, mine_noveleval) -> dict:
    """A training file of 6 NovelEval queries (BM25 + tiny dense index) and a tiny saved teacher."""
    tmp = tmp_path_factory.mktemp("annotate")
    mine_noveleval(tmp / "train.jsonl", depth=4, queries=6)
    fingerprint = load_training_file(tmp / "train.jsonl")[0].sources["dense"]["fingerprint"]
    teacher = CrossEncoder.from_backbone(tiny_model_dir, head="mean", max_length=40, seed=3)
    import torch

    with torch.no_grad():
        teacher.model.dense.weight.normal_(0, 1.0)
    teacher_dir = teacher.save_pretrained(tmp / "teacher")
    return {"tmp": tmp, "file": tmp / "train.jsonl", "teacher": teacher_dir, "fingerprint": fingerprint, "index": tiny_index}


def test_annotation_round_trips_scores_and_attention(setup: dict, tmp_path: Path) -> None:
    out, attention = tmp_path / "annotated.jsonl", tmp_path / "attention"
    assert annotate_main(["--training-file", str(setup["file"]), "--teacher", str(setup["teacher"]), "--output", str(out),
                          "--attention-dir", str(attention), "--attention-negatives", "2", "--no-progress", "--threads", "1"]) == 0
    header, records = load_training_file(out)
    _, original = load_training_file(setup["file"])
    teacher = CrossEncoder.from_pretrained(setup["teacher"])
    assert header.teacher["fingerprint"] == teacher.fingerprint and header.teacher["score"] == "cross_encoder"
    assert [r.query_id for r in records] == [r.query_id for r in original]
    for i, (record, before) in enumerate(zip(records, original)):
        assert [c.docid for c in record.candidates()] == [c.docid for c in before.candidates()]
        from training.teacher import load_passages

        passages = load_passages(header.dataset, {c.docid for c in record.candidates()})
        expected = teacher.score([record.query] * len(record.candidates()), [passages[c.docid] for c in record.candidates()])
        got = [c.teacher_score for c in record.candidates()]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
        assert [c.cross_encoder_score for c in record.candidates()] == got
        cached = load_attention(attention / f"{i:06d}.npz")
        assert list(cached) == [c.docid for c in record.positives] + [c.docid for c in record.negatives[:2]]
        for matrix, q_offsets, p_offsets in cached.values():
            assert matrix.shape == (len(q_offsets), len(p_offsets)) and matrix.dtype == np.float32
            assert q_offsets.max() <= len(record.query) and np.all(matrix >= 0)
            assert len(q_offsets) + len(p_offsets) + 3 <= 40  # truncated to the teacher's max_length


def test_annotation_resumes_after_a_kill(setup: dict, tmp_path: Path) -> None:
    whole = tmp_path / "whole.jsonl"
    argv = ["--training-file", str(setup["file"]), "--teacher", str(setup["teacher"]), "--no-progress", "--threads", "1"]
    assert annotate_main([*argv, "--output", str(whole)]) == 0
    resumed = tmp_path / "resumed.jsonl"
    lines = whole.read_text().splitlines()
    # a run killed after 2 records, in the middle of writing the third
    (tmp_path / "resumed.jsonl.partial").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    assert annotate_main([*argv, "--output", str(resumed)]) == 0
    assert resumed.read_text() == whole.read_text()
    assert not (tmp_path / "resumed.jsonl.partial").exists()
    # a partial file from another teacher is refused, not mixed in
    (tmp_path / "other.jsonl.partial").write_text(lines[0].replace('"fingerprint":"', '"fingerprint":"x') + "\n")
    assert annotate_main([*argv, "--output", str(tmp_path / "other.jsonl")]) == 2


def test_fused_annotation_uses_the_teacher_score_function(setup: dict, tmp_path: Path) -> None:
    fused = CrossEncoder.from_pretrained(setup["teacher"]).save_pretrained(tmp_path / "fused-teacher")
    header = json.loads(setup["file"].read_text().splitlines()[0])
    fusion = TeacherFusion(cross_encoder_weight=0.5, first_stage_weight=0.5, dense_weight=0.4, bm25_weight=0.6,
                           dense_encoder_fingerprint=setup["fingerprint"], bm25=header["sources"]["bm25"])
    update_config(fused, fusion=fusion.model_dump())
    out = tmp_path / "fused.jsonl"
    assert annotate_main(["--training-file", str(setup["file"]), "--teacher", str(fused), "--output", str(out), "--no-progress"]) == 0
    out_header, records = load_training_file(out)
    assert out_header.teacher["score"] == "fused" and out_header.teacher["fusion"]["cross_encoder_weight"] == 0.5
    for record in records:
        candidates = record.candidates()
        expected = teacher_scores(
            [c.docid for c in candidates], [c.cross_encoder_score for c in candidates],
            bm25=[c.scores["bm25"] for c in candidates], dense=[c.scores["dense"] for c in candidates], fusion=fusion,
        )
        assert [c.teacher_score for c in candidates] == pytest.approx(expected.tolist())
    # a fusion fitted with another dense encoder needs its index to recompute the dense scores
    update_config(fused, fusion={**fusion.model_dump(), "dense_encoder_fingerprint": "0" * 64})
    assert annotate_main(["--training-file", str(setup["file"]), "--teacher", str(fused),
                          "--output", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2


def test_bad_input_file_is_one_readable_error(setup: dict, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("this is not json\n")
    code = annotate_main(["--training-file", str(bad), "--teacher", str(setup["teacher"]), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "bad.jsonl:1: not an md2pr-training header" in err and "\n" not in err


def test_score_cache_scores_only_new_pairs_and_ignores_other_teachers(setup: dict, tmp_path: Path) -> None:
    from training.annotate import annotate_file
    from training.data import write_training_file

    first = tmp_path / "first.jsonl"
    annotate_file(setup["file"], first, str(setup["teacher"]), show_progress=False)
    header, records = load_training_file(setup["file"])
    # a later file: the first records with a negative fewer (all pairs known), one query reworded (all pairs new)
    changed = [r.model_copy(update={"negatives": r.negatives[1:]}) for r in records[:-1]]
    changed.append(records[-1].model_copy(update={"query": records[-1].query + " in mice"}))
    later = tmp_path / "later.jsonl"
    write_training_file(later, header, changed)
    new_pairs = len(changed[-1].candidates())
    total = sum(len(r.candidates()) for r in changed)

    stats: dict[str, int] = {}
    annotate_file(later, tmp_path / "cached.jsonl", str(setup["teacher"]), show_progress=False, score_cache=[first], stats=stats)
    assert stats == {"pairs": total, "pairs_scored": new_pairs}
    fresh: dict[str, int] = {}
    annotate_file(later, tmp_path / "fresh.jsonl", str(setup["teacher"]), show_progress=False, stats=fresh)
    assert fresh == {"pairs": total, "pairs_scored": total}
    _, cached_records = load_training_file(tmp_path / "cached.jsonl")
    _, fresh_records = load_training_file(tmp_path / "fresh.jsonl")
    for a, b in zip(cached_records, fresh_records):
        assert [c.docid for c in a.candidates()] == [c.docid for c in b.candidates()]
        assert [c.cross_encoder_score for c in a.candidates()] == pytest.approx([c.cross_encoder_score for c in b.candidates()], abs=1e-5)

    # another teacher's file lends nothing
    other = CrossEncoder.from_backbone(setup["teacher"], head="mean", max_length=40, seed=4)
    other_dir = other.save_pretrained(tmp_path / "other-teacher")
    other_stats: dict[str, int] = {}
    annotate_file(later, tmp_path / "other.jsonl", str(other_dir), show_progress=False, score_cache=[first], stats=other_stats)
    assert other_stats["pairs_scored"] == total
