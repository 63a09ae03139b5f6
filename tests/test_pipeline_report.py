"""The experiment report (pipeline.report), the model card (pipeline.model_card) and their renderers.

Every test reads a small hand-written run directory that follows the formats of md2pr-evaluate
(evaluation/evaluate.py), md2pr-distill (training/distill.py) and md2pr-train-teacher
(training/teacher.py): two seeds of the main variant, one ablation with its second seed not run
yet, a teacher, a filter check with hidden positives, a served evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from pipeline.model_card import write_model_card
from pipeline.report import PLOTS, ablation_label, collect, filter_check_rows, plot_links, render_markdown, write_plots

ROOT = Path(__file__).resolve().parent.parent
LICENCE = "SciFact: CC BY-NC 2.0 (attribution, non-commercial use only)."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, value: dict | list[dict] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, str):
        path.write_text(value)
    elif isinstance(value, list):
        path.write_text("".join(json.dumps(x) + "\n" for x in value))
    else:
        path.write_text(json.dumps(value))


def _evaluation(systems: dict, depth: int = 1000, queries: int = 300) -> dict:
    return {"command": "md2pr-evaluate ...", "machine": {"cpus": 2, "threads": 2}, "dataset": "/data/scifact",
            "split": "test", "queries": queries, "depth": depth, "relevance_level": 1, "systems": systems}


def _metrics(ndcg: float) -> dict[str, float]:
    return {"nDCG@10": ndcg, "MRR@10": ndcg - 0.03, "R@50": 0.85, "R@100": 0.9, "R@1000": 0.98}


def _distill_run(run_dir: Path, variant_config: dict, seed: int, devs: list[float], hidden: bool = False,
                 finished: bool = True) -> None:
    """A distillation run directory: config.json, log.jsonl, iterations.jsonl, state.json (and report.json)."""
    config = {"dataset": "/data/scifact", "split": "train", "teacher": "teacher/model", "student": "builtin:all-MiniLM-L6-v2",
              "iterations": len(devs), "epochs": 1, "max_steps": 3, "queries_per_batch": 8, "negatives": 3, "lr": 2e-5,
              "tau": 0.05, "contrastive_weight": 1.0, "sentence_weight": 1.0, "word_weight": 0.1,
              "filter_mode": "dynamic", "filter_percentile": 10.0, "filter_margin": 0.1, "static_threshold": None,
              "filter_action": "drop", "hide_positives": 0.2 if hidden else 0.0, "select": "best", "seed": seed,
              **variant_config}
    _write(run_dir / "config.json", {"distill": config, "teacher": {"source": "teacher/model", "fingerprint": "ab" * 32, "fusion": None},
                                     "dataset": {"fit_queries": 700, "dev_queries": 109, "hidden_positives": 150 if hidden else 0}})
    log, iterations = [], []
    for t, dev in enumerate(devs, 1):
        for step in range(1, 4):
            line = {"iteration": t, "step": step, "epoch": 0, "loss": 2.0 / step, "contrastive": 1.0 / step,
                    "sentence_kd": 0.8 / step, "lr": 1e-5, "seconds": step * 5.0}
            if config["word_weight"]:
                line["word_kd"] = 2.0 / step
            log.append(line)
        filt = {"mode": config["filter_mode"], "action": "drop", "floor": 0.5 + t / 10, "threshold_min": 0.4,
                "threshold_median": 0.6, "threshold_max": 0.9, "negatives": 100, "flagged": 10 * t,
                "flagged_fraction": t / 10, "queries_with_flags": 5, "labelled_positives": 50}
        if hidden:
            filt["hidden"] = {"hidden_positives": 150, "hidden_mined_as_negatives": 40, "flagged": 10 * t,
                              "flagged_hidden": 5 * t, "precision": 0.5, "recall": 5 * t / 40}
        iterations.append({"iteration": t, "mine": {"queries": 700, "sources": ["bm25", "dense"]}, "filter": filt,
                           "train": {"steps": 3, "queries": 700}, "dev": {"nDCG@10": dev, "MRR@10": dev - 0.02, "R@100": 0.9},
                           "seconds": {"mine": 1.0}})
    _write(run_dir / "log.jsonl", log)
    _write(run_dir / "iterations.jsonl", iterations)
    _write(run_dir / "state.json", {"iteration": len(devs), "phase": "evaluate", "finished": finished,
                                    "base_dev": {"nDCG@10": 0.6, "MRR@10": 0.55, "R@100": 0.88}})
    if finished:
        best = max(range(len(devs)), key=lambda i: devs[i]) + 1
        _write(run_dir / "report.json", {"finished": True, "selected_iteration": best, "select": "best",
                                         "base_dev": {"nDCG@10": 0.6, "MRR@10": 0.55, "R@100": 0.88},
                                         "iterations": iterations, "config": config})


@pytest.fixture()
def run_root(tmp_path: Path) -> Path:
    """A run of two seeds of md2pr and one ablation (seed 1 of the ablation not run), a filter check, a teacher."""
    root = tmp_path / "scifact-cpu"
    variants = {"md2pr": {}, "no-word-kd": {"word_weight": 0}}
    _write(root / "experiment.json", {
        "name": "scifact", "budget": "cpu", "seeds": [0, 1], "config_file": "pipeline/configs/scifact.json", "data_dir": "/data",
        "config": {"name": "scifact", "description": "scientific claims against abstracts",
                   "train": {"dataset": "scifact", "split": "train"},
                   "eval": {"dataset": "scifact", "split": "test", "relevance_level": 1, "depth": 1000},
                   "student": "builtin:all-MiniLM-L6-v2", "variants": variants, "main_variant": "md2pr",
                   "filter_check": {"hide_positives": 0.2},
                   "references": [{"system": "BM25 (BEIR paper)", "metrics": {"nDCG@10": 0.665}, "source": "Thakur et al. 2021"}],
                   "licence": LICENCE},
    })
    steps = [("bm25", "2026-01-01T00:00:01+00:00"), ("base", "2026-01-01T00:00:03+00:00"),
             ("teacher", "2026-01-01T00:00:02+00:00"), ("distill:md2pr-s0", "2026-01-01T00:00:04+00:00")]
    for name, when in steps:
        _write(root / "steps" / f"{name.replace(':', '_')}.json",
               {"step": name, "command": f"md2pr-{name} --flag 'a b'", "seconds": 12.5, "finished_at": when})
    _write(root / "eval" / "bm25.json", _evaluation({"bm25": {"metrics": _metrics(0.657), "config": {}, "seconds": 1.6}}))
    _write(root / "eval" / "base.json", _evaluation({"dense": {"metrics": _metrics(0.645), "config": {}, "seconds": 7.0}}))
    rerank = {"first_stage": "bm25", "depth": 100, "pairs": 29887, "scoring_seconds": 1195.5, "seconds_per_pair": 0.04,
              "cross_encoder": {"source": "teacher/model", "head": "mean", "max_length": 128}}
    _write(root / "eval" / "rerank.json", _evaluation({
        "rerank-bm25": {"metrics": _metrics(0.669), "config": {}, "seconds": 1200.0, "kind": "rerank",
                        "rerank": {**rerank, "score": "cross_encoder"}},
        "fused-rerank-bm25": {"metrics": _metrics(0.748), "config": {}, "seconds": 1201.0, "kind": "rerank",
                              "rerank": {**rerank, "score": "fused", "fusion": {"cross_encoder_weight": 0.55}}},
    }))
    for tag, ndcg, seconds in (("md2pr-s0", 0.70, 6.0), ("md2pr-s1", 0.72, 9.0), ("no-word-kd-s0", 0.68, 6.0)):
        _write(root / "eval" / f"{tag}.json", _evaluation({"dense": {"metrics": _metrics(ndcg), "config": {}, "seconds": seconds}}))
    # served over HTTP: the service clamped the depth to 100, so its R@1000 must not be shown
    _write(root / "eval" / "served.json", _evaluation({"service": {"metrics": _metrics(0.70), "config": {"depth": 100}, "seconds": 30.0}}))
    _distill_run(root / "students" / "md2pr-s0", variants["md2pr"], 0, [0.62, 0.64])
    _distill_run(root / "students" / "md2pr-s1", variants["md2pr"], 1, [0.63, 0.61])
    _distill_run(root / "students" / "no-word-kd-s0", variants["no-word-kd"], 0, [0.61, 0.62])
    _distill_run(root / "students" / "filter-check-s0", {}, 0, [0.6, 0.61], hidden=True)
    model = root / "students" / "md2pr-s0" / "model"
    _write(model / "encoder_config.json", {"schema_version": 1, "pooling": "mean", "normalize": True, "max_query_length": 64,
                                           "max_passage_length": 256, "query_prefix": "", "passage_prefix": "",
                                           "dimension": 384, "fingerprint": "f" * 64})
    _write(model / "config.json", {"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384})
    _write(root / "teacher" / "config.json", {"teacher": {"backbone": "builtin:all-MiniLM-L6-v2"}, "training_file": "mining/train.jsonl",
                                              "header": {"dataset": "/data/scifact", "split": "train"}})
    _write(root / "teacher" / "report.json", {
        "finished": True, "training_file": "mining/train.jsonl", "steps": 370, "best_step": 370, "dev_queries": 109,
        "fit_queries": 700, "config": {"backbone": "builtin:all-MiniLM-L6-v2", "head": "mean", "max_length": 128, "negatives": 7,
                                       "groups_per_step": 4, "epochs": 2},
        "dev_metrics": {"cross_encoder": {"nDCG@10": 0.70, "MRR@10": 0.66}, "teacher_fused": {"nDCG@10": 0.75, "MRR@10": 0.72}},
        "fusion": {"cross_encoder_weight": 0.55, "first_stage_weight": 0.45},
    })
    _write(root / "teacher" / "dev.jsonl", [{"step": 185, "epoch": 0, "metrics": {"nDCG@10": 0.68, "MRR@10": 0.64}}])
    _write(root / "teacher" / "loss.jsonl", [{"step": 1, "epoch": 0, "loss": 2.07, "lr": 1e-4, "seconds": 1.0}])
    _write(root / "indexes" / "student" / "CURRENT", "20260101T000000-abcdef\n")
    return root


def _row(report: dict, name: str) -> dict:
    return next(r for r in report["rows"] if r["name"] == name)


def test_collect_averages_variants_over_seeds(run_root: Path) -> None:
    report = collect(run_root)
    assert json.loads(json.dumps(report)) == report  # JSON-serialisable as it is
    assert (report["name"], report["budget"], report["seeds"]) == ("scifact", "cpu", [0, 1])
    main = _row(report, "md2pr")
    assert main["n_seeds"] == 2 and main["main"] is True
    assert main["metrics"]["nDCG@10"] == pytest.approx(0.71)
    assert main["std"]["nDCG@10"] == pytest.approx(statistics.stdev([0.70, 0.72]))
    assert set(main["seeds"]) == {"0", "1"}
    ablation = _row(report, "no-word-kd")
    assert ablation["n_seeds"] == 1 and ablation["std"]["nDCG@10"] is None
    assert ablation["metrics"]["nDCG@10"] == pytest.approx(0.68)
    assert "no word-level KD" in ablation["system"]
    assert [r["name"] for r in report["rows"] if r["group"] == "teacher"] == ["rerank-bm25", "fused-rerank-bm25"]
    assert _row(report, "bm25")["metrics"]["nDCG@10"] == pytest.approx(0.657)
    published = _row(report, "BM25 (BEIR paper)")
    assert published["kind"] == "published" and published["metrics"] == {"nDCG@10": 0.665}
    assert all(r["kind"] == "measured" for r in report["rows"] if r is not published)
    # R@1000 is a column (depth 1000 evaluations), but not for the service that clamped its depth to 100
    assert report["columns"] == ["nDCG@10", "MRR@10", "R@100", "R@1000"]
    assert "R@1000" in main["metrics"] and "R@1000" not in _row(report, "served")["metrics"]
    assert "R@50" not in main["metrics"]


def test_collect_lists_what_has_not_run(run_root: Path) -> None:
    missing = collect(run_root)["missing"]
    assert "distillation no-word-kd-s1: students/no-word-kd-s1/" in missing
    assert "test evaluation of no-word-kd-s1: eval/no-word-kd-s1.json" in missing
    assert "model card: students/md2pr-s0/model/MODEL_CARD.md" in missing
    assert len(missing) == 3, missing  # everything else exists


def test_collect_iterations_filter_check_and_steps(run_root: Path) -> None:
    report = collect(run_root)
    run = report["runs"]["md2pr-s0"]
    assert run["finished"] and run["selected_iteration"] == 2 and run["steps"] == 6
    assert [it["dev"]["nDCG@10"] for it in run["iterations"]] == [0.62, 0.64]
    assert [(it["floor"], it["flagged"], it["removed"], it["negatives"]) for it in run["iterations"]] == [(0.6, 10, 10, 100), (0.7, 20, 20, 100)]
    assert "filter-check-s0" not in report["runs"]  # a check, not a variant
    (check,) = report["filter_check"]
    assert check["seed"] == 0 and check["hide_positives"] == 0.2
    assert [(it["iteration"], it["precision"], it["recall"]) for it in check["iterations"]] == [(1, 0.5, 0.125), (2, 0.5, 0.25)]
    assert [s["step"] for s in report["steps"]] == ["bm25", "teacher", "base", "distill:md2pr-s0"]  # by finish time
    assert report["steps"][0]["command"] == "md2pr-bm25 --flag 'a b'"
    assert report["teacher"]["fit_queries"] == 700 and report["teacher"]["fusion"]["cross_encoder_weight"] == 0.55


def test_collect_query_time_cost(run_root: Path) -> None:
    cost = collect(run_root)["cost"]
    assert cost["student"]["per_seed"] == {"0": pytest.approx(6.0 / 300), "1": pytest.approx(9.0 / 300)}
    assert cost["student"]["seconds_per_query"] == pytest.approx(7.5 / 300)
    # the fused score reuses the cross-encoder's scores: one teacher cost per first stage
    assert [(t["first_stage"], t["seconds_per_100_pairs"]) for t in cost["teacher"]] == [("bm25", pytest.approx(4.0))]
    assert cost["teacher_over_student"] == pytest.approx(4.0 / (7.5 / 300))
    assert "2 CPU cores, 2 threads" in cost["note"] and "machine" in cost["note"]


def test_collect_partial_run_does_not_raise(run_root: Path) -> None:
    """An unfinished distillation and a JSON file cut by a kill are reported, not fatal."""
    _distill_run(run_root / "students" / "no-word-kd-s1", {"word_weight": 0}, 1, [0.6], finished=False)
    (run_root / "eval" / "rerank.json").write_text('{"systems": {"rerank-bm25": {"metr')
    report = collect(run_root)
    assert any(m.startswith("distillation no-word-kd-s1: students/no-word-kd-s1/report.json (unfinished") for m in report["missing"])
    assert report["runs"]["no-word-kd-s1"]["iterations"][0]["dev"]["nDCG@10"] == 0.6  # from iterations.jsonl
    assert "teacher reranking evaluation: eval/rerank.json" in report["missing"]
    assert not [r for r in report["rows"] if r["group"] == "teacher"]
    assert report["cost"]["teacher"] == []


@pytest.mark.parametrize("make", [False, True])
def test_collect_empty_run_root(tmp_path: Path, make: bool) -> None:
    root = tmp_path / "nothing"
    if make:
        root.mkdir()
    report = collect(root)
    assert report["rows"] == [] and report["runs"] == {} and report["steps"] == [] and report["cost"] is None
    missing = " | ".join(report["missing"])
    for item in ("experiment.json", "eval/bm25.json", "eval/base.json", "teacher/report.json", "eval/rerank.json",
                 "indexes/student/", "eval/served.json", "steps/*.json"):
        assert item in missing
    lines = render_markdown(report, {})
    assert "No evaluation has finished yet." in lines and "#### Missing" in lines
    assert write_plots(report, root, tmp_path / "plots", "experiment-nothing") == []


def test_write_plots(run_root: Path, tmp_path: Path) -> None:
    report = collect(run_root)
    out = tmp_path / "plots"
    paths = write_plots(report, run_root, out, "experiment-scifact")
    assert [p.name for p in paths] == [f"experiment-scifact-{name}.png" for name in PLOTS]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    assert plot_links(paths, "experiment-scifact", tmp_path) == {name: f"plots/experiment-scifact-{name}.png" for name in PLOTS}


def test_write_plots_skips_missing_data(run_root: Path, tmp_path: Path) -> None:
    """Without distillation runs only the ablation bars can be drawn."""
    report = collect(run_root)
    report["runs"] = {}
    paths = write_plots(report, run_root, tmp_path, "x")
    assert [p.name for p in paths] == ["x-ablation.png"]


def test_render_markdown(run_root: Path) -> None:
    report = collect(run_root)
    plots = {name: f"results/experiment-scifact-{name}.png" for name in PLOTS}
    text = "\n".join(render_markdown(report, plots, "benchmarks/results/experiment-scifact.json"))
    for heading in ("### scifact (cpu budget, 2 seeds: 0, 1)", "#### Results", "#### Teacher", "#### Distillation iterations",
                    "#### False-negative filter check (hidden positives)", "#### Query-time cost", "#### Commands", "#### Missing"):
        assert heading in text
    assert "| BM25 (BEIR paper) *(published)* |  | 0.6650 |" in text
    assert "| **md2pr (all components on)** | 2 | 0.7100 ± 0.0141 |" in text
    assert "| no-word-kd (no word-level KD) | 1 | 0.6800 |" in text
    assert "| nDCG@10 | MRR@10 | R@100 | R@1000 |" in text
    for name in PLOTS:
        assert f"(results/experiment-scifact-{name}.png)" in text
    assert "1. `bm25` (2026-01-01T00:00:01+00:00, 12 s): `md2pr-bm25 --flag 'a b'`" in text
    assert "- distillation no-word-kd-s1: students/no-word-kd-s1/" in text
    assert "| 2 | 150 | 40 | 20 | 10 | 0.500 | 0.250 |" in text  # filter check, iteration 2
    assert "2 CPU cores, 2 threads" in text


def test_model_card(run_root: Path) -> None:
    report = collect(run_root)
    student = run_root / "students" / "md2pr-s0" / "model"
    path = write_model_card(student, report)
    assert path == student / "MODEL_CARD.md"
    card = path.read_text()
    assert LICENCE in card
    assert "| pooling | mean |" in card and "| dimension | 384 |" in card
    assert "builtin:all-MiniLM-L6-v2 (bert, 6 layers, hidden size 384)" in card
    assert "**test split**" in card
    assert "| **this student** (md2pr, seed 0) | 0.7000 |" in card
    assert "| md2pr, mean ± std over 2 seeds | 0.7100 ± 0.0141 |" in card
    assert "| BM25 | 0.6570 |" in card and "*(published)*" in card
    assert "700 training queries" in card and "CPU budget" in card
    assert "fitted on dev); dev nDCG@10 0.7500." in card  # the fused teacher's dev figure
    assert "Positives: judged grades" not in card and "Unlabelled queries" not in card  # neither was used
    assert '"word_weight": 0.1' in card  # the run's full config.json
    assert "model card" not in " ".join(collect(run_root)["missing"])


def test_model_card_without_licence_says_so(run_root: Path) -> None:
    report = collect(run_root)
    report["licence"] = ""
    card = write_model_card(run_root / "students" / "md2pr-s0" / "model", report).read_text()
    assert "Not recorded in the experiment configuration" in card


def test_model_card_refuses_a_non_encoder_directory(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="encoder_config.json"):
        write_model_card(tmp_path, {})


def test_ablation_labels_and_filter_check_rows() -> None:
    assert ablation_label({"word_weight": 0, "filter_mode": "static", "static_threshold": 0.5}) == "no word-level KD, static threshold 0.5"
    assert ablation_label({}) == "all components on"
    rows = filter_check_rows([{"iteration": 1, "filter": {"flagged": 3}},
                              {"iteration": 2, "filter": {"hidden": {"precision": None, "recall": 0.0, "flagged": 0}}}])
    assert [(r["iteration"], r["precision"], r["recall"]) for r in rows] == [(2, None, 0.0)]


def test_render_results_has_an_experiments_section(run_root: Path, tmp_path: Path) -> None:
    report = collect(run_root)
    results = tmp_path / "results"
    _write(results / "experiment-scifact.json", {**report, "plots": {"ablation": "results/experiment-scifact-ablation.png"}})
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "RESULTS.md"
    assert module.main(["--results-dir", str(results), "--output", str(output)]) == 0
    text = output.read_text()
    assert "## Experiments (md2pr-experiment)" in text and "### scifact (cpu budget, 2 seeds: 0, 1)" in text
    assert "![test nDCG@10 by system](results/experiment-scifact-ablation.png)" in text


def test_model_card_states_graded_positives_and_unlabelled_queries(run_root: Path) -> None:
    config_file = run_root / "students" / "md2pr-s0" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["distill"].update(relevance_level=2, unlabelled_queries=["dl21", "dl22"])
    saved["dataset"]["unlabelled_queries"] = 924
    config_file.write_text(json.dumps(saved))
    card = write_model_card(run_root / "students" / "md2pr-s0" / "model", collect(run_root)).read_text()
    assert "- Positives: judged grades 2 and up" in card
    assert "- Unlabelled queries: 924 unjudged topics of dl21, dl22" in card


def test_the_report_names_the_filter_rule_of_a_run() -> None:
    from pipeline.report_markdown import _filter_rule

    assert _filter_rule({"filter_percentile": 10.0, "filter_margin": 0.1}) == "percentile 10.0, margin 0.1"  # saved before rules
    assert _filter_rule({"filter_rule": "gap", "filter_percentile": 5.0, "filter_margin": 0.2}) == "percentile 5.0, margin 0.2"
    assert _filter_rule({"filter_rule": "ratio", "filter_ratio": 0.8, "filter_score": "cross_encoder"}) == "ratio 0.8 on the cross_encoder score"


def test_unseen_positive_figures_become_a_column_averaged_over_seeds(run_root: Path) -> None:
    for tag, ndcg, unseen in (("md2pr-s0", 0.70, 0.66), ("md2pr-s1", 0.72, 0.70)):
        system = {"metrics": _metrics(ndcg), "metrics_unseen": {"nDCG@10": unseen, "MRR@10": 0.5}, "config": {}, "seconds": 6.0}
        _write(run_root / "eval" / f"{tag}.json", _evaluation({"dense": system}))
    report = collect(run_root)
    assert report["columns"] == ["nDCG@10", "MRR@10", "R@100", "R@1000", "nDCG@10 unseen"]
    main = _row(report, "md2pr")
    assert main["metrics"]["nDCG@10 unseen"] == pytest.approx(0.68)
    assert main["std"]["nDCG@10 unseen"] == pytest.approx(statistics.stdev([0.66, 0.70]))
    assert "nDCG@10 unseen" not in _row(report, "no-word-kd")["metrics"]  # measured without --unseen-from
    text = "\n".join(render_markdown(report, {}, "x.json"))
    assert "| **md2pr (all components on)** | 2 | 0.7100 ± 0.0141 |" in text
    assert "0.6800 ± 0.0283 |" in text and "*nDCG@10 unseen*: on the test queries" in text
