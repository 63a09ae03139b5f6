"""``MODEL_CARD.md`` beside a distilled student: what it is, how it was trained, what it measured, its limits.

:func:`write_model_card` reads the student directory (``encoder_config.json``, the transformers
``config.json``), its distillation run (the directory above it: ``config.json`` with the
DistillConfig under ``"distill"``) and the experiment report of :func:`pipeline.report.collect`
(metrics, teacher, licence). Nothing is measured here: every number comes from those files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from retrieval.jsonio import write_text_atomic

from .errors import PipelineError
from .report_runs import ablation_label

logger = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"

#: The settings shown in the card's table (the full configuration follows it).
MAIN_SETTINGS = (
    ("student", "base student (S_0)"),
    ("iterations", "iterations (mine -> annotate -> filter -> train)"),
    ("epochs", "epochs per iteration"),
    ("max_steps", "optimizer steps per iteration at most"),
    ("max_queries", "training queries at most"),
    ("queries_per_batch", "queries per micro-batch"),
    ("negatives", "hard negatives per query"),
    ("lr", "learning rate"),
    ("tau", "temperature of the student's scores"),
    ("contrastive_weight", "InfoNCE weight"),
    ("sentence_weight", "sentence-level KD weight"),
    ("word_weight", "word-level KD weight"),
    ("filter_mode", "false-negative filter"),
    ("filter_percentile", "filter: percentile of positive teacher scores"),
    ("filter_margin", "filter: relative margin"),
    ("filter_action", "filter: action"),
    ("filter_rule", "filter: rule (gap: floor + margin; ratio: positive-aware, NV-Retriever-style)"),
    ("filter_ratio", "filter: ratio (rule ratio)"),
    ("filter_score", "filter: score read (teacher or cross-encoder)"),
    ("hide_positives", "positives hidden (filter check)"),
    ("select", "iteration selection"),
    ("seed", "seed"),
)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _find_run(student_dir: Path, report: dict) -> tuple[str | None, dict]:
    """The report's run record whose directory holds ``student_dir`` (``(None, {})`` when none does)."""
    here = student_dir.resolve()
    for tag, run in (report.get("runs") or {}).items():
        run_dir = Path(run.get("run_dir", "")).resolve()
        if here in (run_dir, run_dir / "model") or here.parent == run_dir:
            return tag, run
    return None, {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"  # 2e-05 stays 2e-05, 0.1 stays 0.1
    return "—" if value is None else str(value)


def _metric_row(label: str, metrics: dict, columns: list[str], std: dict | None = None) -> str:
    cells = []
    for column in columns:
        value = metrics.get(column)
        s = (std or {}).get(column)
        cells.append("" if value is None else (f"{value:.4f} ± {s:.4f}" if s is not None else f"{value:.4f}"))
    return f"| {label} | " + " | ".join(cells) + " |"


def write_model_card(student_dir: Path, report: dict) -> Path:
    """Write ``student_dir/MODEL_CARD.md`` from the student's files and the experiment ``report``; returns its path.

    Raises :class:`pipeline.errors.PipelineError` when ``student_dir`` is not a dual-encoder
    directory (no ``encoder_config.json``).
    """
    student_dir = Path(student_dir)
    encoder = _json(student_dir / "encoder_config.json")
    if not encoder:
        raise PipelineError(f"{student_dir}: not a dual-encoder directory (no readable encoder_config.json)")
    backbone = _json(student_dir / "config.json")
    tag, run = _find_run(student_dir, report)
    run_dir = Path(run["run_dir"]) if run.get("run_dir") else student_dir.parent
    record = _json(run_dir / "config.json")
    distill = record.get("distill") or _json(student_dir / "distill_config.json").get("distill") or run.get("config") or {}
    data = record.get("dataset") or run.get("data") or {}
    variant = run.get("variant") or report.get("main_variant") or "student"
    seed = run.get("seed", distill.get("seed"))
    ev = report.get("eval") or {}
    train = report.get("train") or {}
    teacher = report.get("teacher") or {}
    columns = report.get("columns") or ["nDCG@10", "MRR@10", "R@100"]
    name = report.get("name") or "experiment"

    lines = [
        f"# Model card: MD2PR student `{name}/{variant}`" + (f" (seed {seed})" if seed is not None else ""),
        "",
        "Written by `md2pr-experiment` (pipeline/model_card.py) from the files of the run; every number below was "
        "measured by the run's own steps.",
        "",
        "## What it is",
        "",
        "A dual encoder for dense passage retrieval: queries and passages are encoded separately by the same "
        "transformer into vectors, and a passage's score is the inner product of the two"
        + (" unit vectors (cosine similarity)" if encoder.get("normalize", True) else "") + ". It was distilled "
        "from a cross-encoder teacher with MD2PR (sentence-level and word-level distillation, dynamic false-negative "
        f"filtering; configuration: {ablation_label(distill)}). No cross-encoder runs at query time.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {distill.get('student') or report.get('student') or 'unknown'}"
        + (f" ({backbone.get('model_type', '?')}, {backbone.get('num_hidden_layers', '?')} layers, hidden size "
           f"{backbone.get('hidden_size', '?')})" if backbone else "") + " |",
        f"| pooling | {encoder.get('pooling', '?')} |",
        f"| dimension | {encoder.get('dimension', '?')} |",
        f"| normalised | {str(encoder.get('normalize', '?')).lower()} |",
        f"| max tokens (query / passage) | {encoder.get('max_query_length', '?')} / {encoder.get('max_passage_length', '?')} |",
        f"| fingerprint | `{encoder.get('fingerprint') or '?'}` |",
        "",
        "Load it with `md2pr-build-index --encoder <this directory>` (then serve the index), with "
        "`retrieval.encoder.DualEncoder.from_pretrained`, or with sentence-transformers.",
        "",
        "## Training data",
        "",
        f"- Queries: {train.get('dataset') or distill.get('dataset') or '?'}, split `{train.get('split') or distill.get('split') or '?'}`"
        + (f": {data['fit_queries']} training queries (`{distill.get('split', 'train')}:fit`), {data.get('dev_queries', '?')} "
           f"held out for selecting the iteration (`{distill.get('split', 'train')}:dev`)" if data.get("fit_queries") is not None else "")
        + (f"; {data['hidden_positives']} positives hidden on purpose" if data.get("hidden_positives") else "") + ".",
        "- Hard negatives: mined each iteration with the current student (BM25 and the base student in the first).",
    ]
    if (distill.get("relevance_level") or 1) > 1:
        lines.append(f"- Positives: judged grades {distill['relevance_level']} and up; passages judged lower but above 0 "
                     "were neither positives nor negatives.")
    if distill.get("unlabelled_queries"):
        lines.append(f"- Unlabelled queries: {data.get('unlabelled_queries', '?')} unjudged topics of "
                     f"{', '.join(distill['unlabelled_queries'])}, each trained with the teacher's best candidate as its positive.")
    if teacher:
        c = teacher.get("config") or {}
        fusion = teacher.get("fusion")
        dev = (teacher.get("dev_metrics") or {}).get("teacher_fused" if fusion else "cross_encoder") or {}
        lines.append(
            f"- Teacher: a cross-encoder fine-tuned here from {c.get('backbone', '?')} ({c.get('head', '?')} head, "
            f"{c.get('max_length', '?')} tokens) on {teacher.get('fit_queries', '?')} training queries with mined hard "
            f"negatives (listwise loss over 1 positive + {c.get('negatives', '?')} negatives, {teacher.get('steps', '?')} "
            f"steps, best of {c.get('epochs', '?')} epochs on {teacher.get('dev_queries', '?')} dev queries)"
            + (f"; its score is fused with BM25 and the base student's (weights cross-encoder "
               f"{fusion.get('cross_encoder_weight', 0):.2f} / first stage {fusion.get('first_stage_weight', 0):.2f}, fitted on dev)"
               if fusion else "")
            + (f"; dev nDCG@10 {dev['nDCG@10']:.4f}" if dev.get("nDCG@10") is not None else "") + "."
        )
    else:
        source = (record.get("teacher") or {}).get("source") or distill.get("teacher") or "?"
        lines.append(f"- Teacher: the cross-encoder at `{source}` (its training run is not in this report).")
    lines += ["", "## Training configuration", "", "| setting | value |", "|---|---|"]
    for key, label in MAIN_SETTINGS:
        if key in distill:
            lines.append(f"| {label} (`{key}`) | {_fmt(distill[key])} |")
    if run.get("selected_iteration") is not None:
        lines.append(f"| selected iteration (best dev nDCG@10) | {run['selected_iteration']} |")
    if run.get("steps"):
        lines.append(f"| optimizer steps, all iterations | {run['steps']} |")
    lines += ["", f"The run's full configuration (`{run_dir / 'config.json'}`):", "", "```json",
              json.dumps(record or {"distill": distill}, indent=2), "```", ""]

    lines += [
        "## Measured metrics",
        "",
        f"On {ev.get('dataset', '?')}, **{ev.get('split', '?')} split** ({ev.get('queries', '?')} queries, depth "
        f"{ev.get('depth', '?')}); rows marked *published* are quoted from the literature, not measured here.",
        "",
        "| system | " + " | ".join(columns) + " |",
        "|---" + "|---:" * len(columns) + "|",
    ]
    rows = report.get("rows") or []
    own = next((r for r in rows if r.get("group") == "variant" and r.get("name") == variant), None)
    if own and seed is not None and str(seed) in (own.get("seeds") or {}):
        lines.append(_metric_row(f"**this student** ({variant}, seed {seed})", own["seeds"][str(seed)], columns))
    if own and (own.get("n_seeds", 0) > 1 or seed is None or str(seed) not in (own.get("seeds") or {})):
        lines.append(_metric_row(f"{variant}, mean ± std over {own['n_seeds']} seeds", own["metrics"], columns, own.get("std")))
    if own is None:
        lines.append(f"| **this student** ({variant}) | " + " | ".join("" for _ in columns) + " |")
    for row in rows:
        if row.get("group") in ("baseline", "teacher", "served"):
            lines.append(_metric_row(row["system"], row["metrics"], columns))
        elif row.get("kind") == "published":
            lines.append(_metric_row(f"{row['system']} *(published)*", row["metrics"], columns))
    if own is None:
        lines += ["", "This student has not been evaluated on the test split yet."]
    lines.append("")

    budget = report.get("budget")
    lines += [
        "## Intended use and limits",
        "",
        f"- Intended for: first-stage passage retrieval in the domain of {ev.get('dataset') or train.get('dataset') or 'its training data'}"
        + (f" ({report['description']})" if report.get("description") else "") + ", served from a FAISS index by the md2pr service.",
        f"- Evaluated only on the corpus of {ev.get('dataset', '?')} ({ev.get('split', '?')} queries); quality on other "
        "domains, languages or longer documents is not measured and is likely lower.",
        f"- Passages are truncated to {encoder.get('max_passage_length', '?')} tokens and queries to "
        f"{encoder.get('max_query_length', '?')}.",
    ]
    if budget == "cpu":
        lines.append(
            "- This is a **CPU budget** run: training was deliberately short "
            f"({distill.get('iterations', '?')} iteration(s), at most {distill.get('max_steps') or 'an epoch of'} steps each, "
            f"{run.get('steps', '?')} steps in all) to fit 2 CPU cores. It is a measured small-scale replication, not a "
            "converged model; the GPU budget trains longer."
        )
    elif budget:
        lines.append(f"- Budget: {budget}.")
    lines.append("- The teacher's mistakes (and any false negatives the filter missed) are distilled into the student.")
    lines += ["", "## Licence of the training data", ""]
    licence = report.get("licence")
    lines.append(licence if licence else
                 "Not recorded in the experiment configuration (`licence`): check the terms of the training data before any use.")
    lines += ["", "The licence of the base model's weights applies as well.", ""]

    path = student_dir / CARD_FILE
    write_text_atomic(path, "\n".join(lines))  # a reader never sees half a card
    logger.info("model card written: %s", path)
    return path
