"""The experiment report: a run directory of ``md2pr-experiment`` -> one JSON-ready dict, plots, markdown.

Three functions, used by the pipeline's ``report`` step and by ``benchmarks/render_results.py``:

- :func:`collect` reads a finished or partly finished run directory (layout below) and returns
  the report (format below). It never raises on a partial run: whatever has not run yet is
  listed in ``"missing"`` and left out of the tables.
- :func:`write_plots` draws the report's figures (matplotlib, Agg backend) as
  ``<out_dir>/<prefix>-<name>.png``, one per name in :data:`PLOTS` whose data exists.
- :func:`render_markdown` turns the report (and links to the plots) into the markdown section
  of ``benchmarks/RESULTS.md``.

The helpers :func:`ablation_label`, :func:`filter_check_rows`, :func:`plot_curves` and
:func:`read_jsonl` live here only.

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

import json
import logging
import math
import re
import statistics
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evaluation.results import EvaluationReport, SystemResult
from retrieval.jsonio import validation_problems
from retrieval.tables import markdown_table

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Table columns; R@1000 is kept only where the evaluation depth allowed it.
COLUMNS = ("nDCG@10", "MRR@10", "R@100", "R@1000")
#: Loss terms of a distillation run's ``log.jsonl`` (training.losses.MD2PRLoss).
TERMS = ("loss", "contrastive", "sentence_kd", "word_kd")
#: Plots written by :func:`write_plots`, as ``<prefix>-<name>.png``.
PLOTS = ("curves", "dev-ndcg", "false-negatives", "ablation")
FILTER_CHECK = "filter-check"
_RUN_NAME = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


# ------------------------------------------------------------------------------ shared helpers
def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file ([] when it is absent); a line cut by a kill is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping an unreadable line", path)
    return out


def _read_json(path: Path) -> dict | None:
    """A JSON object, or None when the file is absent or unreadable (a step killed mid-write)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("%s: unreadable (%s); treated as missing", path, exc)
        return None
    return value if isinstance(value, dict) else None


def ablation_label(config: dict) -> str:
    """What a distillation run switched off, in words.

    ``config`` is a run's DistillConfig dict, or only the overrides of a variant: absent keys
    take DistillConfig's defaults (every component on).
    """
    off = []
    if config.get("word_weight", 0.1) == 0:
        off.append("no word-level KD")
    if config.get("sentence_weight", 1.0) == 0:
        off.append("no sentence-level KD")
    mode = config.get("filter_mode", "dynamic")
    if mode == "none":
        off.append("no false-negative filter")
    elif mode == "static":
        value = config.get("static_threshold")
        off.append("static threshold" + (f" {value}" if value is not None else " (iteration 1 floor)"))
    if config.get("filter_action") == "positive":
        off.append("false negatives relabelled as positives")
    if config.get("hide_positives"):
        off.append(f"{config['hide_positives']:.0%} of training positives hidden")
    on = []
    if config.get("unlabelled_queries"):
        cap = config.get("max_unlabelled")
        on.append(f"+ {'the first ' + str(cap) + ' ' if cap else ''}unjudged {'/'.join(config['unlabelled_queries'])} "
                  "queries on the teacher's labels")
    return ", ".join([*off, *on]) if off else " ".join(["all components on", *on])


def filter_check_rows(iterations: Iterable[dict]) -> list[dict]:
    """Per iteration of a run made with hidden positives: how well the filter found them.

    Reads each iteration record's ``filter.hidden`` (training.false_negatives.flag_quality):
    precision = flagged hidden positives / all flags, recall = flagged hidden positives / hidden
    positives that mining returned as negatives (only those can be flagged). Iterations without
    the record are skipped.
    """
    rows = []
    for it in iterations:
        hidden = (it.get("filter") or {}).get("hidden")
        if not hidden:
            continue
        rows.append({
            "iteration": it.get("iteration"),
            "hidden_positives": hidden.get("hidden_positives"),
            "hidden_mined_as_negatives": hidden.get("hidden_mined_as_negatives"),
            "flagged": hidden.get("flagged"),
            "flagged_hidden": hidden.get("flagged_hidden"),
            "precision": hidden.get("precision"),
            "recall": hidden.get("recall"),
        })
    return rows


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display; safe in jobs and tests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(name: str, log: list[dict], iterations: list[dict], base_dev: dict | None, output: Path) -> bool:
    """One PNG: each loss term per optimizer step (iterations end-to-end), dev nDCG@10 per iteration.

    ``log``: a run's ``log.jsonl`` lines; ``iterations``: its iteration records; ``base_dev``:
    the base student's dev metrics (iteration 0). Returns False (nothing written) without log lines.
    """
    terms = [t for t in TERMS if any(t in x for x in log)]
    if not terms:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(terms) + 1, figsize=(4 * (len(terms) + 1), 3.2))
    steps = list(range(1, len(log) + 1))
    # dotted lines where one iteration's training ends and the next one's begins
    boundaries = [i + 0.5 for i in range(1, len(log)) if log[i].get("iteration") != log[i - 1].get("iteration")]
    for ax, term in zip(axes, terms):
        values = [x.get(term) for x in log]
        ax.plot(steps, [math.nan if v is None else v for v in values], linewidth=0.6, alpha=0.5)
        window = max(1, len(values) // 30)
        smooth = []
        for i in range(len(values)):
            recent = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
            smooth.append(sum(recent) / len(recent) if recent else math.nan)
        ax.plot(steps, smooth, linewidth=1.5)
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(term)
        ax.set_xlabel("step (all iterations)")
    ax = axes[-1]
    xs = [0] + [it.get("iteration") for it in iterations]
    ys = [(base_dev or {}).get("nDCG@10")] + [(it.get("dev") or {}).get("nDCG@10") for it in iterations]
    ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o")
    ax.set_title("dev nDCG@10")
    ax.set_xlabel("iteration (0 = base student)")
    fig.suptitle(name)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ collect
def _stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _metrics(evaluation: EvaluationReport, system: SystemResult) -> dict[str, float]:
    """The table columns of one system; R@1000 only when at least 1000 hits per query were retrieved
    (a service clamps its depth and records it: :meth:`EvaluationReport.depth_of`)."""
    depth = evaluation.depth_of(system)
    return {name: float(system.metrics[name]) for name in COLUMNS
            if name in system.metrics and not (name == "R@1000" and depth < 1000)}


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


def _run_summary(run_dir: Path, variant: str, seed: int) -> dict | None:
    """A distillation run directory (finished or not) -> its per-iteration record; None if absent."""
    if not run_dir.is_dir():
        return None
    report = _read_json(run_dir / "report.json")
    record = _read_json(run_dir / "config.json") or {}
    state = _read_json(run_dir / "state.json") or {}
    config = record.get("distill") or (report or {}).get("config") or {}
    iterations = (report or {}).get("iterations") or read_jsonl(run_dir / "iterations.jsonl")
    log = read_jsonl(run_dir / "log.jsonl")
    rows = []
    for it in iterations:
        f = it.get("filter") or {}
        flagged = f.get("flagged")
        rows.append({
            "iteration": it.get("iteration"),
            "dev": it.get("dev"),
            "mode": f.get("mode"),
            "action": f.get("action"),
            "floor": f.get("floor"),
            "threshold_min": f.get("threshold_min"),
            "threshold_median": f.get("threshold_median"),
            "threshold_max": f.get("threshold_max"),
            "negatives": f.get("negatives"),
            "flagged": flagged,
            # flagged negatives are dropped, unless the run relabels them as positives
            "removed": flagged if f.get("action", "drop") == "drop" else 0,
            "train_steps": (it.get("train") or {}).get("steps"),
        })
    return {
        "variant": variant,
        "seed": seed,
        "run_dir": str(run_dir),
        "finished": report is not None and bool(report.get("finished", True)),
        "state": {k: state.get(k) for k in ("iteration", "phase")} if state else None,
        "ablation": ablation_label(config),
        "selected_iteration": (report or {}).get("selected_iteration"),
        "base_dev": (report or {}).get("base_dev") or state.get("base_dev"),
        "steps": len(log),
        "config": config,
        "data": record.get("dataset"),
        "teacher": record.get("teacher"),
        "iterations": rows,
        "_raw_iterations": iterations,
    }


def _teacher_summary(teacher_dir: Path) -> dict | None:
    """md2pr-train-teacher's run directory -> what the report and the model card say about it."""
    if not teacher_dir.is_dir():
        return None
    report = _read_json(teacher_dir / "report.json")
    record = _read_json(teacher_dir / "config.json") or {}
    config = (report or {}).get("config") or record.get("teacher") or {}
    header = record.get("header") or {}
    return {
        "dir": str(teacher_dir),
        "finished": report is not None and bool(report.get("finished", True)),
        "steps": (report or {}).get("steps") or len(read_jsonl(teacher_dir / "loss.jsonl")),
        "best_step": (report or {}).get("best_step"),
        "fit_queries": (report or {}).get("fit_queries"),
        "dev_queries": (report or {}).get("dev_queries"),
        "training_file": (report or {}).get("training_file") or record.get("training_file"),
        "training_data": {"dataset": header.get("dataset"), "split": header.get("split")},
        "config": config,
        "dev_metrics": (report or {}).get("dev_metrics"),
        "dev_per_eval": [{"step": d.get("step"), "epoch": d.get("epoch"), **(d.get("metrics") or {})}
                         for d in read_jsonl(teacher_dir / "dev.jsonl")],
        "fusion": (report or {}).get("fusion"),
    }


def _discover_runs(root: Path) -> tuple[list[str], list[int]]:
    """Variants and seeds present in a run root whose experiment.json is missing."""
    variants: list[str] = []
    seeds: set[int] = set()
    names = [p.stem for p in (root / "eval").glob("*-s*.json")] + [p.name for p in (root / "students").glob("*-s*") if p.is_dir()]
    for name in sorted(names):
        m = _RUN_NAME.match(name)
        if m is None:
            continue
        seeds.add(int(m["seed"]))
        if m["variant"] != FILTER_CHECK and m["variant"] not in variants:
            variants.append(m["variant"])
    return variants, sorted(seeds)


def collect(run_root: Path) -> dict[str, Any]:
    """Read a run directory of ``md2pr-experiment`` into the report (see the module docstring).

    Never raises on a partial or empty run: what does not exist yet is listed in ``"missing"``.
    """
    root = Path(run_root)
    missing: list[str] = []
    experiment = _read_json(root / "experiment.json")
    if experiment is None:
        missing.append("experiment configuration: experiment.json (the run has not started)")
        experiment = {}
    config = experiment.get("config") or {}
    variants: dict[str, dict] = dict(config.get("variants") or {})
    seeds = [int(s) for s in experiment.get("seeds") or []]
    if not variants or not seeds:
        found_variants, found_seeds = _discover_runs(root)
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
        value = _read_json(root / path)
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

    teacher = _teacher_summary(root / "teacher")
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
            run = _run_summary(root / "students" / tag, variant, seed)
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
                          if p.is_dir() and (m := _RUN_NAME.match(p.name)) and m["variant"] == FILTER_CHECK})
    if config.get("filter_check", {}) is not None and seeds and seeds[0] not in check_seeds:
        missing.append(f"filter check (hidden positives): students/{FILTER_CHECK}-s{seeds[0]}/")
    checks = []
    for seed in check_seeds:
        run = _run_summary(root / "students" / f"{FILTER_CHECK}-s{seed}", FILTER_CHECK, seed)
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
    report["columns"] = [c for c in COLUMNS if c != "R@1000" or any(c in r["metrics"] for r in rows if r["kind"] == "measured")]
    if first_eval is not None:
        report["eval"].update(queries=first_eval.queries, depth=first_eval.depth, relevance_level=first_eval.relevance_level)
        report["eval"].setdefault("dataset", first_eval.dataset)
        report["eval"].setdefault("split", first_eval.split)
    report["cost"] = _cost(variant_evals.get(main) or {}, rerank)

    steps = []
    for path in sorted((root / "steps").glob("*.json")):
        step = _read_json(path)
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


# -------------------------------------------------------------------------------------- plots
def plot_links(paths: Iterable[Path], prefix: str, base: Path) -> dict[str, str]:
    """``{plot name: path relative to base}`` for the files :func:`write_plots` returned."""
    out = {}
    for path in paths:
        name = path.stem[len(prefix) + 1 :] if path.stem.startswith(prefix + "-") else path.stem
        try:
            out[name] = Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:  # outside base: an absolute path still links on this machine
            out[name] = str(Path(path).resolve())
    return out


def write_plots(report: dict, run_root: Path, out_dir: Path, prefix: str) -> list[Path]:
    """Draw the report's figures as ``out_dir/<prefix>-<name>.png`` (names: :data:`PLOTS`); returns the files.

    ``curves``: each loss term per step of the main variant's lowest seed (its ``log.jsonl``);
    ``dev-ndcg``: dev nDCG@10 per iteration of every variant and seed; ``false-negatives``: the
    negatives the filter flagged per iteration; ``ablation``: test nDCG@10 of every row (mean
    with sample std as error bars; published references hatched). A plot without data is skipped.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    runs = [r for r in (report.get("runs") or {}).values()]
    main = report.get("main_variant")
    main_runs = sorted((r for r in runs if r["variant"] == main), key=lambda r: r["seed"])
    if main_runs:
        run = main_runs[0]
        log = read_jsonl(Path(run_root) / "students" / f"{main}-s{run['seed']}" / "log.jsonl")
        path = out_dir / f"{prefix}-curves.png"
        if plot_curves(f"{main} (seed {run['seed']}): {run['ablation']}", log, run["iterations"], run.get("base_dev"), path):
            written.append(path)
    for name, key, title in (("dev-ndcg", "dev", "dev nDCG@10 per iteration"),
                             ("false-negatives", "flagged", "suspected false negatives removed per iteration (flagged by the filter)")):
        path = out_dir / f"{prefix}-{name}.png"
        if _plot_iterations(runs, report.get("variants") or {}, key, title, path):
            written.append(path)
    path = out_dir / f"{prefix}-ablation.png"
    if _plot_ablation(report.get("rows") or [], path):
        written.append(path)
    return written


def _plot_iterations(runs: list[dict], variants: dict, key: str, title: str, output: Path) -> bool:
    """One line per run: a per-iteration number (dev nDCG@10 from iteration 0, or flagged negatives)."""
    lines = []
    for run in runs:
        if key == "dev":
            xs = [0] + [it["iteration"] for it in run["iterations"]]
            ys = [(run.get("base_dev") or {}).get("nDCG@10")] + [(it.get("dev") or {}).get("nDCG@10") for it in run["iterations"]]
        else:
            xs = [it["iteration"] for it in run["iterations"]]
            ys = [it.get("flagged") for it in run["iterations"]]
        if any(y is not None for y in ys[1 if key == "dev" else 0 :]):
            lines.append((run, xs, [math.nan if y is None else y for y in ys]))
    if not lines:
        return False
    plt = _pyplot()
    order = list(variants) or sorted({r["variant"] for r, _, _ in lines})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run, xs, ys in lines:
        index = order.index(run["variant"]) if run["variant"] in order else len(order)
        styles = ("-", "--", ":", "-.")
        ax.plot(xs, ys, marker="o", color=colours[index % len(colours)], linestyle=styles[run["seed"] % len(styles)],
                label=f"{run['variant']} s{run['seed']}")
    ax.set_xlabel("iteration" + (" (0 = base student)" if key == "dev" else ""))
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True


def _plot_ablation(rows: list[dict], output: Path) -> bool:
    """Horizontal bars of test nDCG@10: measured rows with std error bars, published rows hatched in grey."""
    rows = [r for r in rows if "nDCG@10" in r.get("metrics", {})]
    if not any(r["kind"] == "measured" for r in rows):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]  # first row on top
    for y, row in zip(ys, rows):
        published = row["kind"] == "published"
        value = row["metrics"]["nDCG@10"]
        err = (row.get("std") or {}).get("nDCG@10")
        ax.barh(y, value, xerr=err, capsize=3,
                color="lightgrey" if published else ("tab:orange" if row.get("main") else "tab:blue"),
                hatch="//" if published else None, edgecolor="grey" if published else None)
        ax.text(value + (err or 0) + 0.005, y, f"{value:.3f}", va="center", fontsize=7)
    labels = [f"{r['system']} (published)" if r["kind"] == "published" else
              (f"{r['system']} [n={r['n_seeds']}]" if r.get("group") == "variant" else r["system"]) for r in rows]
    ax.set_yticks(ys)
    ax.set_yticklabels([textwrap.fill(label, 45) for label in labels], fontsize=7)
    ax.set_xlim(0, max(r["metrics"]["nDCG@10"] + ((r.get("std") or {}).get("nDCG@10") or 0) for r in rows) * 1.12)
    ax.set_xlabel("test nDCG@10 (mean over seeds; error bars: sample std)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------- markdown
def _filter_rule(config: dict[str, Any]) -> str:
    """A run's filter rule as read in the report (runs saved before the ratio rule have none: gap)."""
    if config.get("filter_rule") == "ratio":
        return f"ratio {config.get('filter_ratio', '?')} on the {config.get('filter_score', 'teacher')} score"
    return f"percentile {config.get('filter_percentile', '?')}, margin {config.get('filter_margin', '?')}"


def _num(value: Any, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cell(row: dict, column: str) -> str:
    value = row["metrics"].get(column)
    if value is None:
        return ""
    std = (row.get("std") or {}).get(column)
    return f"{value:.4f} ± {std:.4f}" if std is not None else f"{value:.4f}"


def render_markdown(report: dict, plots: dict[str, str], source: str | None = None) -> list[str]:
    """The report as markdown lines for ``benchmarks/RESULTS.md``.

    ``plots``: ``{name: path relative to benchmarks/}`` (see :func:`plot_links`); ``source``:
    the JSON file the report was read from, named in the header when given.
    """
    ev = report.get("eval") or {}
    train = report.get("train") or {}
    seeds = report.get("seeds") or []
    lines = [
        f"### {report.get('name')} ({report.get('budget') or 'unknown'} budget, {len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
        f"{', '.join(str(s) for s in seeds) or 'none'})",
        "",
    ]
    if report.get("description"):
        lines += [report["description"], ""]
    lines += [
        f"Trained on {train.get('dataset', '?')} / {train.get('split', '?')}; evaluated on {ev.get('dataset', '?')} / "
        f"{ev.get('split', '?')} ({ev.get('queries', '?')} queries, depth {ev.get('depth', '?')}, relevance level "
        f"{ev.get('relevance_level', '?')}). Run directory `{report.get('run_root')}`"
        + (f"; source `{source}`." if source else "."),
        "",
        "#### Results",
        "",
        "Variants: mean ± sample standard deviation over the seeds in column *n* (no ± with one seed). "
        "Rows marked *published* are quoted from the literature, not measured here.",
        "",
    ]
    columns = report.get("columns") or []
    rows = report.get("rows") or []
    if rows:
        cells = []
        for row in rows:
            if row["kind"] == "published":
                label = f"{row['system']} *(published)*"
            elif row.get("main"):
                label = f"**{row['system']}**"
            else:
                label = row["system"]
            n = "" if row["kind"] == "published" else str(row.get("n_seeds", 1))
            cells.append([label, n, *(_cell(row, c) for c in columns)])
        lines += [*markdown_table(["system", "n", *columns], cells, "ll" + "r" * len(columns)), ""]
        published = [r for r in rows if r["kind"] == "published" and r.get("source")]
        if published:
            lines += ["Published sources: " + "; ".join(f"{r['system']}: {r['source']}" for r in published) + ".", ""]
    else:
        lines += ["No evaluation has finished yet.", ""]
    if plots.get("ablation"):
        lines += [f"![test nDCG@10 by system]({plots['ablation']})", ""]

    lines += _render_teacher(report.get("teacher"))
    lines += _render_runs(report, plots)
    lines += _render_filter_check(report.get("filter_check") or [])
    lines += _render_cost(report.get("cost"))

    known = {"ablation", "curves", "dev-ndcg", "false-negatives"}
    other = {k: v for k, v in plots.items() if k not in known}
    if other:
        lines += ["#### Other plots", "", *(f"- [{k}]({v})" for k, v in other.items()), ""]

    lines += ["#### Commands", ""]
    steps = report.get("steps") or []
    if steps:
        lines.append("Every finished step, in the order it finished (rerun one by hand to reproduce it):")
        lines.append("")
        for i, step in enumerate(steps, 1):
            seconds = step.get("seconds")
            took = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
            lines.append(f"{i}. `{step.get('step')}` ({step.get('finished_at') or 'unknown time'}{took}): `{step.get('command')}`")
    else:
        lines.append("No step has finished yet.")
    lines += ["", "#### Missing", ""]
    missing = report.get("missing") or []
    lines += [f"- {m}" for m in missing] if missing else ["Nothing: every step of the run finished."]
    lines.append("")
    return lines


def _render_teacher(teacher: dict | None) -> list[str]:
    if not teacher:
        return []
    c = teacher.get("config") or {}
    lines = [
        "#### Teacher",
        "",
        f"Cross-encoder from {c.get('backbone', '?')} ({c.get('head', '?')} head, {c.get('max_length', '?')} tokens), "
        f"{teacher.get('steps')} steps" + ("" if teacher.get("finished") else " (unfinished)")
        + f" of {c.get('groups_per_step', '?')} groups of 1 + {c.get('negatives', '?')} passages; "
        f"{teacher.get('fit_queries', '?')} training queries, {teacher.get('dev_queries', '?')} dev queries; "
        f"best step {teacher.get('best_step')}. Run: `{teacher.get('dir')}`.",
        "",
    ]
    dev = teacher.get("dev_metrics") or {}
    if dev:
        rows = [[name, _num(m.get("nDCG@10")), _num(m.get("MRR@10"))] for name, m in dev.items()]
        lines += [*markdown_table(["on train:dev", "nDCG@10", "MRR@10"], rows, "lrr"), ""]
    fusion = teacher.get("fusion")
    if fusion:
        lines += [f"Fused teacher score: cross-encoder {_num(fusion.get('cross_encoder_weight'), 2)} / first stage "
                  f"{_num(fusion.get('first_stage_weight'), 2)}.", ""]
    return lines


def _render_runs(report: dict, plots: dict[str, str]) -> list[str]:
    runs = report.get("runs") or {}
    if not runs:
        return []
    lines = ["#### Distillation iterations", ""]
    for key in ("curves", "dev-ndcg", "false-negatives"):
        if plots.get(key):
            title = {"curves": "training curves of the main variant", "dev-ndcg": "dev nDCG@10 per iteration",
                     "false-negatives": "negatives flagged per iteration"}[key]
            lines += [f"![{title}]({plots[key]})", ""]
    for tag, run in runs.items():
        c = run.get("config") or {}
        state = "" if run.get("finished") else " (unfinished)"
        lines += [
            f"**{tag}**{state}: {run.get('ablation')}; {run.get('steps')} steps of {c.get('queries_per_batch', '?')} queries x "
            f"(1 + {c.get('negatives', '?')}) passages; weights contrastive {c.get('contrastive_weight', '?')}, sentence KD "
            f"{c.get('sentence_weight', '?')}, word KD {c.get('word_weight', '?')}; filter {c.get('filter_mode', '?')} "
            f"({_filter_rule(c)}, {c.get('filter_action', '?')}); "
            f"selected iteration {run.get('selected_iteration')}.",
            "",
        ]
        base = run.get("base_dev") or {}
        rows = [["0 (base)", _num(base.get("nDCG@10")), _num(base.get("MRR@10")), "", "", "", ""]]
        for it in run.get("iterations") or []:
            dev = it.get("dev") or {}
            spread = "" if it.get("threshold_min") is None else f"{it['threshold_min']:.3f} .. {it['threshold_max']:.3f}"
            flagged = "" if it.get("flagged") is None else f"{it['flagged']} of {it.get('negatives')}"
            rows.append([it.get("iteration"), _num(dev.get("nDCG@10")), _num(dev.get("MRR@10")), _num(it.get("floor"), 3),
                         spread, flagged, it.get("removed")])
        lines += [*markdown_table(["iteration", "dev nDCG@10", "dev MRR@10", "threshold floor", "per-query thresholds",
                                   "negatives flagged", "removed"], rows, "lrrrllr"), ""]
    return lines


def _render_filter_check(checks: list[dict]) -> list[str]:
    if not checks:
        return []
    lines = [
        "#### False-negative filter check (hidden positives)",
        "",
        "A run that hides a fraction of the training positives from the qrels: a hidden positive that mining returns "
        "as a negative is a known false negative. Precision: flagged hidden positives / all flags; recall: flagged hidden "
        "positives / hidden positives mined as negatives.",
        "",
    ]
    for check in checks:
        hidden = check.get("hide_positives")
        lines += [
            f"Seed {check['seed']}" + (f", {hidden:.0%} of positives hidden" if isinstance(hidden, (int, float)) else "")
            + ("" if check.get("finished") else " (unfinished)") + f": `{check.get('run_dir')}`.",
            "",
        ]
        rows = [[it["iteration"], it.get("hidden_positives"), it.get("hidden_mined_as_negatives"), it.get("flagged"),
                 it.get("flagged_hidden"), _num(it.get("precision"), 3) or "-", _num(it.get("recall"), 3) or "-"]
                for it in check.get("iterations") or []]
        lines += [*markdown_table(["iteration", "hidden positives", "mined as negatives", "flags", "flagged hidden", "precision",
                                   "recall"], rows, "lrrrrrr"), ""]
    return lines


def _render_cost(cost: dict | None) -> list[str]:
    if not cost:
        return []
    rows = []
    student = cost.get("student")
    if student:
        rows.append([f"student: dense retrieval (mean over seeds {', '.join(student['per_seed'])})",
                     f"{student['seconds_per_query']:.4f}", "query"])
    for t in cost.get("teacher") or []:
        value = "" if t.get("seconds_per_100_pairs") is None else f"{t['seconds_per_100_pairs']:.2f}"
        rows.append([f"teacher: cross-encoder over {t.get('first_stage')}'s hits ({t.get('pairs')} pairs scored)", value, "100 pairs"])
    lines = ["#### Query-time cost", "", cost.get("note", ""), "", *markdown_table(["system", "seconds", "per"], rows, "lrl"), ""]
    if cost.get("teacher_over_student") is not None:
        lines += [f"Reranking 100 passages with the teacher costs {cost['teacher_over_student']:.0f}x the student's "
                  "whole query, on this machine.", ""]
    return lines
