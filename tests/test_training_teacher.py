"""Teacher training: the loss goes down, groups never mix positives in, resume continues exactly, fusion fitting."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retrieval.cross_encoder import CrossEncoder
from retrieval.datasets import in_dev_subset
from training.errors import TrainingError
from training.teacher import (
    TeacherTrainConfig,
    _make_optimizer,
    epoch_groups,
    load_passages,
    split_records,
    train_step,
    train_teacher,
)
from training.teacher import main as train_main


@pytest.fixture(scope="module")
def training_file(tmp_path_factory: pytest.TempPathFactory, mine_noveleval) -> Path:
    """NovelEval mined from BM25 and a tiny dense index (21 queries; a few fall in the dev subset)."""
    return mine_noveleval(tmp_path_factory.mktemp("teacher-data") / "train.jsonl", depth=8)


def _config(tiny_model_dir: Path, **changes) -> TeacherTrainConfig:
    base = TeacherTrainConfig(
        backbone=str(tiny_model_dir), max_length=48, negatives=3, groups_per_step=2, epochs=1, max_steps=4,
        lr=1e-3, head_lr=1e-2, warmup=0.0, dev_depth=5, save_every=2,
    )
    return replace(base, **changes)


def test_groups_hold_one_positive_and_only_mined_negatives(training_file: Path, tiny_model_dir: Path) -> None:
    from training.data import load_training_file

    _, records = load_training_file(training_file)
    fit, dev = split_records(records)
    assert fit and dev and not {r.query_id for r in fit} & {r.query_id for r in dev}
    assert all(in_dev_subset(r.query_id) for r in dev)
    config = _config(tiny_model_dir)
    groups = epoch_groups(fit, config, epoch=0)
    positives = {(r.query, p.docid) for r in fit for p in r.positives}
    negatives = {(r.query, n.docid) for r in fit for n in r.negatives}
    assert len(groups) == sum(1 for r in fit for _ in r.positives if r.negatives)
    for group in groups:
        assert (group.query, group.positive) in positives
        assert len(group.negatives) == 3 and all((group.query, n) in negatives for n in group.negatives)
    assert epoch_groups(fit, config, 0) == groups and epoch_groups(fit, config, 1) != groups  # pure in (seed, epoch)


def test_prior_negatives_are_other_queries_positives(training_file: Path, tiny_model_dir: Path) -> None:
    from training.data import load_training_file

    _, records = load_training_file(training_file)
    fit, _ = split_records(records)
    config = _config(tiny_model_dir, prior_negatives=2)
    groups = epoch_groups(fit, config, epoch=0)
    own = {r.query: {p.docid for p in r.positives} for r in fit}
    mined = {r.query: {n.docid for n in r.negatives} for r in fit}
    every_positive = {d for docids in own.values() for d in docids}
    assert len(groups) == len(epoch_groups(fit, _config(tiny_model_dir), 0))
    for group in groups:
        assert len(group.negatives) == 3
        assert all(n in mined[group.query] for n in group.negatives[:1])  # 3 - 2 mined
        prior = group.negatives[1:]
        assert all(n in every_positive and n not in own[group.query] for n in prior)
    with pytest.raises(TrainingError):
        _config(tiny_model_dir, prior_negatives=4)  # more than the group's negatives
    # few other positives: drawn with replacement; none at all: every negative mined; groups stay full
    a, b = [r for r in fit if r.negatives][:2]
    b = b.model_copy(update={"positives": [p for p in b.positives if p.docid not in own[a.query]][:1]})
    pair = [a, b]  # a has one other positive to draw 3 from
    few = epoch_groups(pair, _config(tiny_model_dir, prior_negatives=3), 0)
    assert few and all(len(g.negatives) == 3 and not set(g.negatives) & own[g.query] for g in few)
    alone = epoch_groups(pair[:1], _config(tiny_model_dir, prior_negatives=3), 0)
    assert alone and all(len(g.negatives) == 3 and set(g.negatives) <= mined[g.query] for g in alone)


def test_two_training_steps_reduce_the_loss(training_file: Path, tiny_model_dir: Path) -> None:
    from training.data import load_training_file
    from training.teacher import listwise_loss

    header, records = load_training_file(training_file)
    fit, _ = split_records(records)
    config = _config(tiny_model_dir)
    groups = epoch_groups(fit, config, 0)[:2]
    passages = load_passages(header.dataset, {d for g in groups for d in (g.positive, *g.negatives)})
    model = CrossEncoder.from_backbone(config.backbone, config.head, config.max_length, seed=0)
    model.model.eval()  # dropout off, so the before/after losses are comparable

    def loss_now() -> float:
        queries = [g.query for g in groups for _ in range(4)]
        texts = [passages[d] for g in groups for d in (g.positive, *g.negatives)]
        with torch.no_grad():
            return float(listwise_loss(model.forward(model.tokenize(queries, texts)).view(2, 4)))

    before = loss_now()
    assert before == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-6)  # zero-initialised mean head: chance
    optimizer, scheduler = _make_optimizer(model, config, total_steps=10)
    torch.manual_seed(0)
    for _ in range(2):
        train_step(model, groups, passages, optimizer, scheduler)
    model.model.eval()
    assert loss_now() < before - 1e-3


def test_resume_continues_from_the_saved_step(training_file: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _config(tiny_model_dir, fit_fusion=False)
    straight = train_teacher(training_file, tmp_path / "straight", config, show_progress=False)
    assert straight["finished"] and straight["steps"] == 4

    partial = train_teacher(training_file, tmp_path / "killed", config, show_progress=False, stop_after=3)
    assert partial == {"finished": False, "steps": 3, "total_steps": 4}
    state = torch.load(tmp_path / "killed" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_teacher(training_file, tmp_path / "killed", config, show_progress=False)
    resumed = train_teacher(training_file, tmp_path / "killed", config, resume=True, show_progress=False)
    assert resumed["finished"] and resumed["steps"] == 4

    def losses(run: str) -> list[tuple[int, float]]:
        lines = (tmp_path / run / "loss.jsonl").read_text().splitlines()
        return [(json.loads(x)["step"], json.loads(x)["loss"]) for x in lines]

    assert [s for s, _ in losses("killed")] == [1, 2, 3, 4]  # one line a step, none repeated
    # the resumed run continues the same trajectory: same groups, optimizer state and RNG
    assert [l for _, l in losses("killed")] == pytest.approx([l for _, l in losses("straight")], abs=1e-4)
    straight_model = CrossEncoder.from_pretrained(tmp_path / "straight" / "checkpoint")
    resumed_model = CrossEncoder.from_pretrained(tmp_path / "killed" / "checkpoint")
    texts = ["heart disease risk", "bicycle history"]
    assert resumed_model.score(texts, texts[::-1]) == pytest.approx(straight_model.score(texts, texts[::-1]), abs=1e-4)


def test_training_fits_and_records_the_fused_teacher(training_file: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = train_main([
        "--training-file", str(training_file), "--output-dir", str(out), "--backbone", str(tiny_model_dir),
        "--max-length", "48", "--negatives", "3", "--groups-per-step", "2", "--epochs", "1", "--max-steps", "2",
        "--dev-depth", "5", "--no-progress", "--threads", "1",
    ])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    model = CrossEncoder.from_pretrained(out / "model")
    fusion = model.config.fusion
    assert fusion is not None and fusion.fitted_on.endswith("test:dev (candidates within rank 5)")
    assert fusion.dense_encoder_fingerprint == json.loads(training_file.read_text().splitlines()[0])["sources"]["dense"]["fingerprint"]
    assert set(report["dev_metrics"]) == {"cross_encoder", "bm25", "dense", "first_stage_fused", "teacher_fused"}
    # the fitted fusion is at least as good on dev as either of its two grid ends
    assert report["dev_metrics"]["teacher_fused"]["nDCG@10"] >= report["dev_metrics"]["first_stage_fused"]["nDCG@10"] - 1e-9
    # the documented teacher score, applied to the dev candidates, reproduces the fitted dev metric
    from retrieval.cross_encoder import teacher_scores
    from retrieval.metrics import evaluate_run
    from training.data import load_training_file
    from training.teacher import dev_candidates, records_qrels

    _, records = load_training_file(training_file)
    _, dev = split_records(records)
    ce_run = json.loads((out / "dev_run.json").read_text())
    run = {}
    for qid, cands in dev_candidates(dev, 5).items():
        docids = [c.docid for c in cands]
        scores = teacher_scores(docids, [ce_run[qid][d] for d in docids], bm25=[c.scores["bm25"] for c in cands],
                                dense=[c.scores["dense"] for c in cands], fusion=fusion)
        run[qid] = dict(zip(docids, scores.tolist()))
    again = evaluate_run(records_qrels(dev), run)
    assert again["nDCG@10"] == pytest.approx(fusion.objective["nDCG@10"], abs=1e-9)
    assert model.config.training["best_step"] == 2
    assert len((out / "loss.jsonl").read_text().splitlines()) == 2 and (out / "dev.jsonl").is_file()


def test_bad_settings_and_files_are_one_line_errors(training_file: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(training_file.read_text().splitlines()[0] + "\n{not json\n")
    assert train_main(["--training-file", str(bad), "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.jsonl:2: invalid record" in err and "\n" not in err
    assert train_main(["--training-file", str(training_file), "--output-dir", str(tmp_path / "o2"), "--negatives", "0"]) == 2
    assert "negatives=0" in capsys.readouterr().err
    assert train_main(["--training-file", str(training_file), "--output-dir", str(tmp_path / "o3"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
