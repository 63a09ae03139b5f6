"""What the experiment report (:func:`pipeline.report.collect`) reads from the run directories of one
experiment: a distillation run (:func:`run_summary`), the teacher's run (:func:`teacher_summary`),
the runs present when ``experiment.json`` is missing (:func:`discover_runs`), and two helpers that
the report, the model card and their renderers share: :func:`ablation_label` and
:func:`filter_check_rows`. Nothing here raises on a partial run: an absent or unreadable file
reads as missing."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from retrieval.jsonio import read_jsonl

logger = logging.getLogger(__name__)

#: The variant name of the run made with hidden positives (the filter check).
FILTER_CHECK = "filter-check"
#: ``<variant>-s<seed>``: the name of a run directory under ``students/`` (and of its eval file).
RUN_NAME = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def read_json(path: Path) -> dict | None:
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


def run_summary(run_dir: Path, variant: str, seed: int) -> dict | None:
    """A distillation run directory (finished or not) -> its per-iteration record; None if absent."""
    if not run_dir.is_dir():
        return None
    report = read_json(run_dir / "report.json")
    record = read_json(run_dir / "config.json") or {}
    state = read_json(run_dir / "state.json") or {}
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


def teacher_summary(teacher_dir: Path) -> dict | None:
    """md2pr-train-teacher's run directory -> what the report and the model card say about it."""
    if not teacher_dir.is_dir():
        return None
    report = read_json(teacher_dir / "report.json")
    record = read_json(teacher_dir / "config.json") or {}
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


def discover_runs(root: Path) -> tuple[list[str], list[int]]:
    """Variants and seeds present in a run root whose experiment.json is missing."""
    variants: list[str] = []
    seeds: set[int] = set()
    names = [p.stem for p in (root / "eval").glob("*-s*.json")] + [p.name for p in (root / "students").glob("*-s*") if p.is_dir()]
    for name in sorted(names):
        m = RUN_NAME.match(name)
        if m is None:
            continue
        seeds.add(int(m["seed"]))
        if m["variant"] != FILTER_CHECK and m["variant"] not in variants:
            variants.append(m["variant"])
    return variants, sorted(seeds)
