"""``md2pr-experiment`` end to end on NovelEval with tiny random models (pipeline/).

One module-scoped run goes through every step (BM25, base student, mining, teacher training,
the main student, its published index evaluated over HTTP by a real service process, the model
card, the teacher's reranking, an ablation, the filter check, the report); the other tests
check its outputs and the cache: a killed step runs again while finished ones are kept, a
changed setting makes a step stale, and ``--rerun`` redoes a step and what is built on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.rankings import dense_rankings, measures_within, to_run
from pipeline import runner as runner_module
from pipeline.cli import main as experiment_main
from pipeline.config import ExperimentConfig, load_config, shipped_configs
from pipeline.errors import PipelineError
from retrieval.datasets import load_dataset
from retrieval.metrics import evaluate_run


def tiny_config(noveleval: Path, tiny_model_dir: Path, **changes) -> dict:
    """A complete experiment on NovelEval with the tiny BERT as student and teacher backbone."""
    config = {
        "name": "tiny",
        "description": "NovelEval with tiny random models (a test)",
        "train": {"dataset": str(noveleval), "split": "test"},
        "eval": {"dataset": str(noveleval), "split": "test", "relevance_level": 1, "depth": 100},
        "student": str(tiny_model_dir),
        "mining_depth": 6,
        "rerank_depth": 10,
        "variants": {"md2pr": {}, "no-word-kd": {"word_weight": 0}},
        "filter_check": {"hide_positives": 0.2},
        "references": [{"system": "a published system", "metrics": {"nDCG@10": 0.5}, "source": "a paper"}],
        "licence": "NovelEval: Apache-2.0 (a test).",
        "budgets": {
            "tiny": {
                "teacher": {"preset": "cpu", "overrides": {
                    "backbone": str(tiny_model_dir), "max_length": 48, "negatives": 2, "groups_per_step": 2,
                    "max_steps": 2, "lr": 1e-3, "head_lr": 1e-2, "warmup": 0.0, "dev_depth": 5, "save_every": 1}},
                "distill": {"preset": "cpu", "overrides": {
                    "iterations": 1, "max_steps": 1, "queries_per_batch": 4, "negatives": 2, "mining_depth": 6,
                    "negative_depth": 6, "attention_negatives": 1, "teacher_batch_size": 16, "encode_batch_size": 64,
                    "lr": 1e-3, "word_weight": 0.5, "filter_percentile": 50.0, "filter_margin": 0.5, "dev_depth": 20,
                    "save_every": 1}},
                "seeds": [0],
                "threads": 1,
            }
        },
    }
    config.update(changes)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config))
    return path


def argv(config_file: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", str(config_file), "--budget", "tiny", "--run-root", str(root),
            "--results-dir", str(root.parent / "results"), *extra]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path, one_thread) -> dict:
    base = tmp_path_factory.mktemp("experiment")
    config_file = write_config(base / "tiny.json", tiny_config(noveleval, tiny_model_dir))
    root = base / "run"
    assert experiment_main(argv(config_file, root)) == 0
    return {"root": root, "config_file": config_file, "base": base}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_step_ran_and_left_its_output(experiment: dict) -> None:
    root = experiment["root"]
    markers = sorted(p.stem for p in (root / "steps").glob("*.json"))
    assert markers == sorted([
        "bm25", "base-index", "base", "mine", "teacher", "distill.md2pr-s0", "eval.md2pr-s0", "student-index",
        "served", "rerank", "distill.no-word-kd-s0", "eval.no-word-kd-s0", "distill.filter-check-s0",
    ])
    for marker in (root / "steps").glob("*.json"):
        data = _json(marker)
        assert data["command"].startswith(("md2pr-", "MD2PR_INDEX=")) and len(data["key"]) == 64
    assert set(_json(root / "eval" / "bm25.json")["systems"]) == {"bm25"}
    assert set(_json(root / "eval" / "base.json")["systems"]) == {"dense"}
    assert {"rerank-bm25", "rerank-dense"} <= set(_json(root / "eval" / "rerank.json")["systems"])
    for variant in ("md2pr", "no-word-kd"):
        evaluation = _json(root / "eval" / f"{variant}-s0.json")
        dense = evaluation["systems"]["dense"]
        # the recorded figure is the figure of the index it names, scored again here
        dataset = load_dataset(Path(evaluation["dataset"]), evaluation["split"])
        query_encoder = (dense["config"].get("query_encoder") or {}).get("source")
        ranked, _ = dense_rankings(dataset, evaluation["depth"], Path(dense["config"]["index"]), None, query_encoder)
        again = evaluate_run(dataset.qrels, to_run(ranked), measures_within(evaluation["depth"])[0],
                             relevance_level=evaluation["relevance_level"])
        assert dense["metrics"]["nDCG@10"] == pytest.approx(again["nDCG@10"], abs=1e-9) and again["nDCG@10"] > 0
        assert (root / "students" / f"{variant}-s0" / "model" / "encoder_config.json").is_file()
    # the ablation reused the main run's first iteration instead of annotating again
    shared = _json(root / "students" / "no-word-kd-s0" / "config.json")["distill"]
    assert shared["first_iteration_from"] == str(root / "students" / "md2pr-s0")
    assert shared["word_weight"] == 0
    assert _json(root / "students" / "filter-check-s0" / "config.json")["distill"]["hide_positives"] == 0.2


def test_the_served_index_reproduces_the_in_process_metrics(experiment: dict) -> None:
    root = experiment["root"]
    served = _json(root / "eval" / "served.json")
    assert set(served["systems"]) == {"service"}
    check = _json(root / "eval" / "served-check.json")
    assert check["reproduced"] is True
    assert {"nDCG@10", "MRR@10", "R@100"} <= set(check["measures"])
    assert all(row["difference"] <= check["tolerance"] for row in check["measures"].values())


def test_model_card_and_report(experiment: dict) -> None:
    root, base = experiment["root"], experiment["base"]
    card = (root / "students" / "md2pr-s0" / "model" / "MODEL_CARD.md").read_text()
    assert "NovelEval: Apache-2.0 (a test)." in card
    assert (base / "results" / "experiment-tiny-tiny-MODEL_CARD.md").read_text() == card
    report_md = (root / "report" / "REPORT.md").read_text()
    for needle in ("no-word-kd", "a published system", "md2pr-train-teacher", "md2pr-distill"):
        assert needle in report_md
    results = _json(base / "results" / "experiment-tiny-tiny.json")
    assert results["kind"] == "experiment"
    assert results["plots"], "no plot was written"
    for path in results["plots"].values():
        assert (base / path).is_file() and (base / path).stat().st_size > 0


def test_a_second_run_is_all_cached(experiment: dict, capsys) -> None:
    capsys.readouterr()
    assert experiment_main(argv(experiment["config_file"], experiment["root"])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # only the report and the model card are rewritten every time
    assert summary["ran"] == 2 and summary["cached"] == summary["steps"] - 2


def test_list_shows_every_step_done(experiment: dict, capsys) -> None:
    capsys.readouterr()
    assert experiment_main(argv(experiment["config_file"], experiment["root"], "--list")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    states = {line.split()[1]: line.split()[0] for line in lines}
    assert states["teacher"] == "done" and states["distill:no-word-kd-s0"] == "done"
    assert states["report"] == "pending"  # rewritten on every run, never cached
    teacher_line = next(line for line in lines if line.split()[1] == "teacher")
    assert "md2pr-train-teacher --training-file" in teacher_line


def test_report_only_rewrites_the_report_from_finished_steps(experiment: dict, capsys) -> None:
    report = experiment["root"] / "report" / "REPORT.md"
    report.unlink()
    capsys.readouterr()
    assert experiment_main(argv(experiment["config_file"], experiment["root"], "--report-only")) == 0
    assert json.loads(capsys.readouterr().out)["rewritten"] == ["model-card", "report"]
    assert "no-word-kd" in report.read_text()


def test_a_killed_step_runs_again_and_finished_ones_are_kept(
    tmp_path: Path, noveleval: Path, tiny_model_dir: Path, monkeypatch, capsys
) -> None:
    config_file = write_config(tmp_path / "tiny.json", tiny_config(noveleval, tiny_model_dir))
    root = tmp_path / "run"
    real_mine = runner_module.importlib.import_module("training.mining").main
    calls: list[list[str]] = []

    def killed_mine(args: list[str]) -> int:
        calls.append(args)
        return 130  # what run_main answers to a Ctrl-C in the middle of the step

    monkeypatch.setattr("training.mining.main", killed_mine)
    assert experiment_main(argv(config_file, root, "--until", "teacher", "--no-results")) == 2
    assert "step mine failed (exit 130)" in capsys.readouterr().err and len(calls) == 1
    assert not (root / "steps" / "mine.json").exists()
    assert (root / "steps" / "base.json").is_file()

    monkeypatch.setattr("training.mining.main", real_mine)
    capsys.readouterr()
    assert experiment_main(argv(config_file, root, "--until", "mine", "--no-results")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {**summary, "steps": 4, "ran": 1, "cached": 3}

    # a changed setting makes the step stale: refused, then redone with --rerun (and what needs it)
    write_config(config_file, tiny_config(noveleval, tiny_model_dir, mining_depth=5))
    capsys.readouterr()
    assert experiment_main(argv(config_file, root, "--until", "mine", "--no-results")) == 2
    err = capsys.readouterr().err
    assert "step mine is stale" in err and err.count("\n") == 1
    assert experiment_main(argv(config_file, root, "--until", "mine", "--no-results", "--rerun", "mine")) == 0
    assert _json(root / "steps" / "mine.json")["argv"][7] == "5"


def test_bad_configurations_are_one_line(tmp_path: Path, noveleval: Path, tiny_model_dir: Path, capsys) -> None:
    bad = tiny_config(noveleval, tiny_model_dir, main_variant="missing")
    for config, expected in [
        (bad, "main_variant 'missing' is not one of the variants"),
        ({**tiny_config(noveleval, tiny_model_dir), "surprise": 1}, "surprise: Extra inputs are not permitted"),
        (tiny_config(noveleval, tiny_model_dir, train={"dataset": "no/such/dir", "split": "train"}), "not found"),
    ]:
        capsys.readouterr()
        assert experiment_main(["--config", str(write_config(tmp_path / "c.json", config)), "--budget", "tiny",
                                "--run-root", str(tmp_path / "run"), "--no-results"]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert experiment_main(["--config", "nonexistent-name", "--list"]) == 2
    assert experiment_main(["--config", str(write_config(tmp_path / "c.json", tiny_config(noveleval, tiny_model_dir))),
                            "--budget", "gpu", "--list"]) == 2


@pytest.mark.parametrize("name", shipped_configs())
def test_shipped_configurations_load_and_plan(name: str) -> None:
    from pipeline.steps import build_plan

    config, path = load_config(name)
    assert isinstance(config, ExperimentConfig) and path.is_file()
    assert {"cpu", "gpu"} <= set(config.budgets)
    for budget_name, budget in config.budgets.items():
        plan = build_plan(config, budget_name, budget, budget.seeds, Path("/tmp/never-written"))
        names = [s.name for s in plan.steps]
        assert names[0] == "bm25" and names[-1] == "report"
        assert {f"distill:{v}-s{budget.seeds[0]}" for v in config.variants} <= set(names)
        # every step's needs come before it
        for i, step in enumerate(plan.steps):
            assert set(step.needs) <= set(names[:i]), step.name
    assert "scifact" in shipped_configs() and "dl" in shipped_configs()


def test_unknown_step_names_are_refused(tmp_path: Path, noveleval: Path, tiny_model_dir: Path, capsys) -> None:
    config_file = write_config(tmp_path / "tiny.json", tiny_config(noveleval, tiny_model_dir))
    with pytest.raises(PipelineError, match="no step 'nope'"):
        from pipeline.runner import Runner
        from pipeline.steps import build_plan

        config, _ = load_config(config_file)
        Runner(build_plan(config, "tiny", config.budgets["tiny"], [0], tmp_path / "run")).run(until="nope")


def test_later_runs_share_the_first_runs_first_iteration(noveleval: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.steps import build_plan

    config = ExperimentConfig.model_validate(tiny_config(noveleval, tiny_model_dir))
    plan = build_plan(config, "tiny", config.budgets["tiny"], [0, 1], tmp_path / "run")
    first = str(plan.student_dir("md2pr", 0))
    for name in ("distill:no-word-kd-s0", "distill:md2pr-s1", "distill:no-word-kd-s1"):
        args = plan.step(name).argv()
        assert args[args.index("--first-iteration-from") + 1] == first and "distill:md2pr-s0" in plan.step(name).needs
    # the main run and the filter check (its mining hides positives) compute their own
    for name in ("distill:md2pr-s0", "distill:filter-check-s0"):
        assert "--first-iteration-from" not in plan.step(name).argv()
    assert [s.name for s in plan.steps].count("eval:md2pr-s1") == 1


def test_a_variant_that_mines_otherwise_computes_its_own_first_iteration(
    noveleval: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from pipeline.steps import build_plan

    raw = tiny_config(noveleval, tiny_model_dir)
    raw["variants"] = {**raw["variants"], "unlabelled": {"unlabelled_queries": ["dl22"], "epochs": 1}}
    config = ExperimentConfig.model_validate(raw)
    plan = build_plan(config, "tiny", config.budgets["tiny"], [0, 1], tmp_path / "run")
    own = plan.step("distill:unlabelled-s0")
    assert "--first-iteration-from" not in own.argv() and "distill:md2pr-s0" not in own.needs
    assert own.argv()[own.argv().index("--unlabelled-queries") + 1] == "dl22"
    # its later seeds share its own first seed's iteration 1, not the main variant's
    later = plan.step("distill:unlabelled-s1").argv()
    assert later[later.index("--first-iteration-from") + 1] == str(plan.student_dir("unlabelled", 0))
    shared = plan.step("distill:no-word-kd-s0").argv()
    assert shared[shared.index("--first-iteration-from") + 1] == str(plan.student_dir("md2pr", 0))


def test_a_query_tower_variant_is_evaluated_against_the_base_index(noveleval: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from pipeline.steps import build_plan

    raw = tiny_config(noveleval, tiny_model_dir)
    raw["variants"] = {**raw["variants"], "query": {"train_tower": "query", "word_weight": 0}}
    raw["eval"] = {**raw["eval"], "unseen_from": "test"}
    config = ExperimentConfig.model_validate(raw)
    plan = build_plan(config, "tiny", config.budgets["tiny"], [0], tmp_path / "run")
    assert "student-pair" not in [s.name for s in plan.steps]  # the main variant trains both towers
    args = plan.step("eval:query-s0").argv()
    assert args[args.index("--query-encoder") + 1] == str(plan.student_dir("query", 0) / "model")
    assert args[args.index("--index") + 1] == str(tmp_path / "run" / "indexes" / "base")
    assert "base-index" in plan.step("eval:query-s0").needs
    # every evaluation measures the unseen-positive subset too
    for name in ("bm25", "base", "eval:query-s0"):
        step_args = plan.step(name).argv()
        assert step_args[step_args.index("--unseen-from") + 1] == "test"

    # with a query-tower main variant, the served index is the base encoder's, paired with the student
    query_main = ExperimentConfig.model_validate({**raw, "main_variant": "query"})
    plan = build_plan(query_main, "tiny", query_main.budgets["tiny"], [0], tmp_path / "run")
    index_args = plan.step("student-index").argv()
    assert index_args[index_args.index("--encoder") + 1] == str(tiny_model_dir)
    assert plan.step("student-pair").argv() == ["pair", "--index-root", str(tmp_path / "run" / "indexes" / "student"),
                                                "--query-encoder", str(plan.student_dir("query", 0) / "model")]
    assert "student-pair" in plan.step("served").needs
