"""The experiment report: a run directory of ``md2pr-experiment`` -> one JSON-ready dict, plots, markdown.

Three functions, used by the pipeline's ``report`` step and by ``benchmarks/render_results.py``:

- :func:`collect` reads a finished or partly finished run directory (layout below) and returns
  the report (format below). It never raises on a partial run: whatever has not run yet is
  listed in ``"missing"`` and left out of the tables.
- :func:`write_plots` draws the report's figures (matplotlib, Agg backend) as
  ``<out_dir>/<prefix>-<name>.png``, one per name in :data:`PLOTS` whose data exists.
- :func:`render_markdown` turns the report (and links to the plots) into the markdown section
  of ``benchmarks/RESULTS.md``.

:func:`collect` lives here; what it reads from each run directory, with the helpers
:func:`ablation_label` and :func:`filter_check_rows`, in :mod:`pipeline.report_runs`; the plots in
:mod:`pipeline.report_plots`, the markdown in :mod:`pipeline.report_markdown` (all re-exported here).

Run directory (``run_root``), written by the pipeline's steps::

    experiment.json               {"name", "budget", "seeds", "config": {experiment config}, "config_file", "data_dir"}
    steps/<step>.json             one per finished step: {"step", "command", "seconds", "finished_at"}
    eval/bm25.json, base.json     md2pr-evaluate --output JSON (systems "bm25", "dense")
    eval/rerank.json              rerank systems ("rerank-<stage>", "fused-rerank-<stage>")
    eval/<variant>-s<seed>.json   a distilled student (system "dense")
    eval/served.json              the main student's published index over HTTP (system "service")
    teacher/                      md2pr-train-teacher's run (report.json, dev.jsonl, loss.jsonl, model/)
    students/<variant>-s<seed>/   md2pr-distill runs (config.json, log.jsonl, iterations.jsonl, report.json, model/)
    students/filter-check-s<seed>/  the run with hidden positives (its "filter" records hold "hidden")
    indexes/student/              the main student's published index root (CURRENT)

Report (JSON-serialisable)::

    {"kind": "experiment", "schema_version": 1, "name", "budget", "seeds", "run_root", "description",
     "licence", "train": {"dataset", "split"}, "eval": {"dataset", "split", "relevance_level", "queries",
     "depth"}, "student", "main_variant", "variants": {name: DistillConfig overrides},
     "columns": ["nDCG@10", "MRR@10", "R@100"(, "R@1000")],
     "rows": [{"system": label, "kind": "measured" | "published", "group": "baseline" | "teacher" |
               "variant" | "served" | "reference", "name", "n_seeds", "metrics": {column: mean},
               "std": {column: sample std or null}, "seeds": {seed: metrics} (variants), "source"}],
     "runs": {"<variant>-s<seed>": {"variant", "seed", "run_dir", "finished", "ablation", "selected_iteration",
              "base_dev", "steps", "config", "data", "teacher",
              "iterations": [{"iteration", "dev", "mode", "action", "floor", "threshold_min",
                              "threshold_median", "threshold_max", "negatives", "flagged", "removed",
                              "train_steps"}]}},
     "filter_check": [{"seed", "run_dir", "finished", "hide_positives", "iterations": [{"iteration",
                       "hidden_positives", "hidden_mined_as_negatives", "flagged", "flagged_hidden",
                       "precision", "recall"}]}],
     "teacher": {"dir", "finished", "steps", "best_step", "fit_queries", "dev_queries", "config",
                 "dev_metrics", "dev_per_eval", "fusion", "training_file"} | null,
     "cost": {"student": {...}, "teacher": [{...}], "note"} | null,
     "steps": [{"step", "command", "seconds", "finished_at"}] (by finish time),
     "missing": ["what: path", ...]}

Metric means are over seeds; ``std`` is the sample standard deviation (null with one seed).
R@1000 is reported only where the evaluation retrieved at least 1000 hits per query.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evaluation.results import EvaluationReport, SystemResult
from retrieval.jsonio import read_jsonl, validation_problems

from .report_markdown import UNSEEN, render_markdown
from .report_plots import PLOTS, plot_curves, plot_links, write_plots
from .report_runs import (
    FILTER_CHECK,
    RUN_NAME,
    ablation_label,
    discover_runs,
    filter_check_rows,
    read_json,
    run_summary,
    teacher_summary,
)

__all__ = ["PLOTS", "ablation_label", "collect", "filter_check_rows", "plot_curves", "plot_links", "read_jsonl",
           "render_markdown", "write_plots"]


SCHEMA_VERSION = 1
#: Table columns; R@1000 is kept only where the evaluation depth allowed it, and the unseen-positive
#: subset's nDCG@10 (``md2pr-evaluate --unseen-from``: the test queries none of whose positives is a
#: training positive) only where an evaluation measured it.
COLUMNS = ("nDCG@10", "MRR@10", "R@100", "R@1000", UNSEEN)


# ------------------------------------------------------------------------------------ collect
def _stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _metrics(evaluation: EvaluationReport, system: SystemResult) -> dict[str, float]:
    """The table columns of one system; R@1000 only when at least 1000 hits per query were retrieved
    (a service clamps its depth and records it: :meth:`EvaluationReport.depth_of`)."""
    depth = evaluation.depth_of(system)
    metrics = {name: float(system.metrics[name]) for name in COLUMNS
               if name in system.metrics and not (name == "R@1000" and depth < 1000)}
    if system.metrics_unseen and "nDCG@10" in system.metrics_unseen:
        metrics[UNSEEN] = float(system.metrics_unseen["nDCG@10"])
    return metrics


def _system(evaluation: EvaluationReport | None, name: str) -> SystemResult | None:
    """One system of an md2pr-evaluate report, or its only system when the name differs."""
    return evaluation.system(name) if evaluation is not None else None


def _rerank_label(name: str, system: SystemResult, run_name: str | None = None) -> str:
    rerank = system.rerank
    score = "fused teacher score" if rerank is not None and rerank.score == "fused" else "cross-encoder score"
    stage = rerank.first_stage if rerank is not None else "?"
    stage = f"the published run {run_name}" if stage == "run" and run_name else stage
    return f"teacher: {name} (top {rerank.depth if rerank is not None else '?'} of {stage} by the {score})"


def _run_name(config: dict, system: SystemResult) -> str | None:
    """The configuration's name for the published first-stage run a system read (``first_stage_runs``)."""
    path = system.config.get("run")
    if not path:
        return None
    for name, relative in (config.get("first_stage_runs") or {}).items():
        if str(path).endswith(str(relative)):
            return name
    return Path(path).name


def _machine_text(machine: dict | None) -> str:
    if not machine:
        return "an unrecorded machine"
    text = f"{machine.get('cpus', '?')} CPU cores, {machine.get('threads', '?')} threads"
    return text + (f" ({machine['cpu_model']})" if machine.get("cpu_model") else "")


def collect(run_root: Path) -> dict[str, Any]:
    """Read a run directory of ``md2pr-experiment`` into the report (see the module docstring).

    Never raises on a partial or empty run: what does not exist yet is listed in ``"missing"``.
    """
    root = Path(run_root)
    missing: list[str] = []
    experiment = read_json(root / "experiment.json")
    if experiment is None:
        missing.append("experiment configuration: experiment.json (the run has not started)")
        experiment = {}
    config = experiment.get("config") or {}
    variants: dict[str, dict] = dict(config.get("variants") or {})
    seeds = [int(s) for s in experiment.get("seeds") or []]
    if not variants or not seeds:
        found_variants, found_seeds = discover_runs(root)
        variants = variants or {v: {} for v in found_variants}
        seeds = seeds or found_seeds
    main = config.get("main_variant") or (next(iter(variants)) if variants else None)
    report: dict[str, Any] = {
        "kind": "experiment",
        "schema_version": SCHEMA_VERSION,
        "name": experiment.get("name") or config.get("name") or root.name,
        "budget": experiment.get("budget"),
        "seeds": seeds,
        "run_root": str(root),
        "config_file": experiment.get("config_file"),
        "description": config.get("description", ""),
        "licence": config.get("licence", ""),
        "train": config.get("train"),
        "eval": dict(config.get("eval") or {}),
        "student": config.get("student"),
        "main_variant": main,
        "variants": variants,
    }

    def need(path: str, what: str) -> dict | None:
        value = read_json(root / path)
        if value is None:
            missing.append(f"{what}: {path}")
        return value

    def need_evaluation(path: str, what: str) -> EvaluationReport | None:
        """An md2pr-evaluate report, validated (evaluation.results): a renamed or missing key is
        listed as missing with the field, never read as a blank cell."""
        value = need(path, what)
        if value is None:
            return None
        try:
            return EvaluationReport.model_validate(value)
        except ValidationError as exc:
            missing.append(f"{what}: {path} (not an md2pr-evaluate report: {validation_problems(exc, 'report')})")
            return None

    rows: list[dict] = []
    for ref in config.get("references") or []:
        rows.append({"system": ref.get("system", "?"), "kind": "published", "group": "reference", "name": ref.get("system"),
                     "metrics": {k: float(v) for k, v in (ref.get("metrics") or {}).items() if k in COLUMNS},
                     "std": {}, "source": ref.get("source", "")})

    first_eval: EvaluationReport | None = None
    bm25 = need_evaluation("eval/bm25.json", "BM25 evaluation")
    base = need_evaluation("eval/base.json", "base student evaluation")
    for evaluation, name, label, key in ((bm25, "bm25", "BM25", "bm25"),
                                         (base, "dense", f"base student ({config.get('student') or 'base'})", "base")):
        system = _system(evaluation, name)
        if system is not None:
            first_eval = first_eval or evaluation
            rows.append({"system": label, "kind": "measured", "group": "baseline", "name": key, "n_seeds": 1,
                         "metrics": _metrics(evaluation, system), "std": {}, "source": f"eval/{key}.json"})

    teacher = teacher_summary(root / "teacher")
    if teacher is None or not teacher["finished"]:
        missing.append("teacher training: teacher/report.json" + (" (unfinished)" if teacher else ""))
    report["teacher"] = teacher
    rerank = need_evaluation("eval/rerank.json", "teacher reranking evaluation")
    rerank_systems = list(rerank.systems.items()) if rerank is not None else []
    for name, system in rerank_systems:  # a published first-stage run, measured as it is
        run_name = _run_name(config, system)
        if not system.is_rerank and run_name:
            rows.append({"system": f"published run {run_name} (as published)", "kind": "measured",
                         "group": "baseline", "name": name, "n_seeds": 1, "metrics": _metrics(rerank, system), "std": {},
                         "source": "eval/rerank.json"})
    for name, system in rerank_systems:
        if system.is_rerank:
            first_eval = first_eval or rerank
            rows.append({"system": _rerank_label(name, system, _run_name(config, system)), "kind": "measured",
                         "group": "teacher", "name": name, "n_seeds": 1, "metrics": _metrics(rerank, system), "std": {},
                         "source": "eval/rerank.json"})

    runs: dict[str, dict] = {}
    variant_evals: dict[str, dict[int, dict[str, Any]]] = {}
    for variant, overrides in variants.items():
        per_seed: dict[int, dict] = {}
        for seed in seeds:
            tag = f"{variant}-s{seed}"
            run = run_summary(root / "students" / tag, variant, seed)
            if run is None:
                missing.append(f"distillation {tag}: students/{tag}/")
            else:
                runs[tag] = run
                if not run["finished"]:
                    where = run["state"] or {}
                    missing.append(f"distillation {tag}: students/{tag}/report.json (unfinished: iteration "
                                   f"{where.get('iteration', '?')}, phase {where.get('phase', '?')})")
            evaluation = need_evaluation(f"eval/{tag}.json", f"test evaluation of {tag}")
            system = _system(evaluation, "dense")
            if system is not None:
                first_eval = first_eval or evaluation
                per_seed[seed] = {"metrics": _metrics(evaluation, system), "evaluation": evaluation, "system": system}
        variant_evals[variant] = per_seed
        if not per_seed:
            continue
        metrics, std = {}, {}
        for name in COLUMNS:
            values = [s["metrics"][name] for s in per_seed.values() if name in s["metrics"]]
            if len(values) == len(per_seed):  # a column some seed lacks is left out, not averaged over fewer
                metrics[name], std[name] = _stats(values)
        label_config = next((runs[f"{variant}-s{s}"]["config"] for s in per_seed if f"{variant}-s{s}" in runs), overrides)
        rows.append({
            "system": f"{variant} ({ablation_label(label_config)})", "kind": "measured", "group": "variant", "name": variant,
            "main": variant == main, "n_seeds": len(per_seed), "metrics": metrics, "std": std,
            "seeds": {str(s): v["metrics"] for s, v in per_seed.items()},
            "source": ", ".join(f"eval/{variant}-s{s}.json" for s in per_seed),
        })

    # the filter check (hidden positives): the pipeline runs it for the first seed when configured
    check_seeds = sorted({int(m["seed"]) for p in (root / "students").glob(f"{FILTER_CHECK}-s*")
                          if p.is_dir() and (m := RUN_NAME.match(p.name)) and m["variant"] == FILTER_CHECK})
    if config.get("filter_check", {}) is not None and seeds and seeds[0] not in check_seeds:
        missing.append(f"filter check (hidden positives): students/{FILTER_CHECK}-s{seeds[0]}/")
    checks = []
    for seed in check_seeds:
        run = run_summary(root / "students" / f"{FILTER_CHECK}-s{seed}", FILTER_CHECK, seed)
        if run is None:
            continue
        if not run["finished"]:
            missing.append(f"filter check: students/{FILTER_CHECK}-s{seed}/report.json (unfinished)")
        checks.append({"seed": seed, "run_dir": run["run_dir"], "finished": run["finished"],
                       "hide_positives": run["config"].get("hide_positives"),
                       "iterations": filter_check_rows(run["_raw_iterations"])})
    report["filter_check"] = checks
    for run in runs.values():
        run.pop("_raw_iterations", None)
    report["runs"] = runs

    if not (root / "indexes" / "student" / "CURRENT").is_file():
        missing.append("published index of the main student: indexes/student/")
    served = need_evaluation("eval/served.json", "served evaluation (over HTTP)")
    system = _system(served, "service")
    if system is not None:
        rows.append({"system": "served: the main student's published index over HTTP", "kind": "measured",
                     "group": "served", "name": "served", "n_seeds": 1, "metrics": _metrics(served, system),
                     "std": {}, "source": "eval/served.json"})
    if main is not None and seeds and not (root / "students" / f"{main}-s{seeds[0]}" / "model" / "MODEL_CARD.md").is_file():
        missing.append(f"model card: students/{main}-s{seeds[0]}/model/MODEL_CARD.md")

    report["rows"] = rows
    # R@1000 only when some measured row could compute it (the evaluation depth allowed it)
    report["columns"] = [c for c in COLUMNS if c not in ("R@1000", UNSEEN)
                         or any(c in r["metrics"] for r in rows if r["kind"] == "measured")]
    if first_eval is not None:
        report["eval"].update(queries=first_eval.queries, depth=first_eval.depth, relevance_level=first_eval.relevance_level)
        report["eval"].setdefault("dataset", first_eval.dataset)
        report["eval"].setdefault("split", first_eval.split)
    report["cost"] = _cost(variant_evals.get(main) or {}, rerank)

    steps = []
    for path in sorted((root / "steps").glob("*.json")):
        step = read_json(path)
        if step is not None:
            steps.append({k: step.get(k) for k in ("step", "command", "seconds", "finished_at")})
    steps.sort(key=lambda s: (s.get("finished_at") or "", s.get("step") or ""))
    report["steps"] = steps
    if not steps:
        missing.append("step records: steps/*.json")
    report["missing"] = missing
    return report


def _cost(main_evals: dict[int, dict[str, Any]], rerank: EvaluationReport | None) -> dict | None:
    """Query-time cost: the student per query vs the teacher per 100 reranked pairs, with the machine.

    ``main_evals``: per seed of the main variant, ``{"evaluation": EvaluationReport, "system": SystemResult}``.
    """
    student = None
    if main_evals:
        per_query = {}
        for seed, value in main_evals.items():
            evaluation, system = value["evaluation"], value["system"]
            if system.seconds is not None and evaluation.queries:
                per_query[str(seed)] = system.seconds / evaluation.queries
        if per_query:
            some = next(iter(main_evals.values()))["evaluation"]
            student = {"seconds_per_query": statistics.fmean(per_query.values()), "per_seed": per_query,
                       "queries": some.queries, "machine": some.machine.model_dump()}
    teacher = []
    seen = set()
    for system in (rerank.systems.values() if rerank is not None else []):
        r = system.rerank
        if not system.is_rerank or r is None or r.first_stage in seen:
            continue  # the fused score reuses the cross-encoder scores of its stage: one cost per stage
        seen.add(r.first_stage)
        per_pair = r.seconds_per_pair
        teacher.append({"first_stage": r.first_stage, "pairs": r.pairs, "seconds_per_pair": per_pair,
                        "seconds_per_100_pairs": None if per_pair is None else per_pair * 100})
    if student is None and not teacher:
        return None
    note = (
        f"Measured on the machine recorded in the evaluations (student: {_machine_text((student or {}).get('machine'))}; "
        f"teacher: {_machine_text(rerank.machine.model_dump() if rerank is not None else None)}), not a controlled benchmark. The student's figure is the "
        "wall time of its whole test evaluation (loading the encoder and index, encoding the queries in batches, exact "
        "search) divided by the number of queries; the teacher's is cross-encoder scoring time alone per pair not found in "
        "the score cache, times 100 (a typical reranking depth), so a null means every pair came from the cache."
    )
    ratio = None
    per_100 = [t["seconds_per_100_pairs"] for t in teacher if t["seconds_per_100_pairs"] is not None]
    if student and per_100 and student["seconds_per_query"] > 0:
        ratio = statistics.fmean(per_100) / student["seconds_per_query"]
    return {"student": student, "teacher": teacher, "teacher_over_student": ratio,
            "machine": (student or {}).get("machine") or (rerank.machine.model_dump() if rerank is not None else None),
            "note": note}
