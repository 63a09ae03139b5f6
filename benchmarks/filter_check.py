"""The false-negative filter's hidden-positive check on SciFact, per iteration, for several rules.

A distillation run (the query-tower core of ``benchmarks/distill_seeds.py`` with sentence KD and
the filter, ``--iterations`` iterations, BM25 + dense mining in every iteration) is trained with a
fraction (``--hide``) of the ``train:fit`` positives hidden from the qrels: those passages come
back from mining as "negatives" the filter should catch. For every iteration's annotated
candidates (iteration 2 on is mined with the previous iteration's student) each rule below is
applied to the same records and scored against the hidden positives mined as negatives:

- precision: flagged negatives that are hidden positives / all flagged negatives (a lower bound of
  the true precision: SciFact's judgements are sparse, so some flags are unjudged relevant passages);
- recall: hidden positives mined as negatives that were flagged / all of them.

Rules (:class:`training.false_negatives.FilterConfig`): ``gap`` (the current rule: global floor at
the 10th percentile of positive scores, and ``best - 0.1 * (best - median)`` per query) and
``ratio`` at several ratios (flag ``exp(s_neg - s_best) > ratio``; NV-Retriever-style), each on
the teacher score (fused) and on the cross-encoder score alone. The run itself trains with
``--train-rule`` (its own per-iteration check is in its ``state.json``, and the student it leaves
decides iteration 2's candidates). Resumable (the run resumes; run in chunks under the lock)::

    flock /tmp/heavy.lock timeout 840 .venv/bin/python benchmarks/filter_check.py \\
        --base-index artifacts/experiments/scifact-cpu/indexes/base \\
        --teacher artifacts/experiments/scifact-cpu/teacher/model

Writes ``benchmarks/results/scifact-filter-check.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.distill_seeds import CORE, teacher_runs  # noqa: E402
from benchmarks.service_common import command_line, machine_facts  # noqa: E402

logger = logging.getLogger("filter_check")

#: name -> FilterConfig settings compared on every iteration's candidates.
RULES: dict[str, dict[str, Any]] = {
    "gap (current) / teacher": {"rule": "gap", "percentile": 10.0, "margin": 0.1, "score": "teacher"},
    "gap (current) / cross-encoder": {"rule": "gap", "percentile": 10.0, "margin": 0.1, "score": "cross_encoder"},
    **{f"ratio {r} / {label}": {"rule": "ratio", "ratio": r, "score": score}
       for score, label in (("teacher", "teacher"), ("cross_encoder", "cross-encoder"))
       for r in (0.95, 0.8, 0.5, 0.2)},
}


def check_rules(records: list, hidden: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """Flag quality of every rule in :data:`RULES` on one iteration's annotated records."""
    from training.false_negatives import FilterConfig, filter_false_negatives, flag_quality

    out: dict[str, dict[str, Any]] = {}
    for name, settings in RULES.items():
        result = filter_false_negatives(records, FilterConfig(mode="dynamic", **settings))
        quality = flag_quality(result.flagged, hidden, records)
        out[name] = {**settings, **quality, "negatives": result.negatives,
                     "flagged_fraction": round(result.flagged_count / result.negatives, 5) if result.negatives else 0.0}
    return out


#: The issue's operating point: a rule worth having flags with precision >= 0.5 at recall >= 0.8.
TARGET_PRECISION, TARGET_RECALL = 0.5, 0.8


def operating_points(records: list, hidden: dict[str, set[str]], score: str = "teacher", top1: bool = False,
                     precision: float = TARGET_PRECISION, recall: float = TARGET_RECALL) -> dict[str, Any]:
    """What *any* threshold on ``score`` relative to the query's own best positive can reach.

    The rules of :data:`RULES` are single points; this sweeps the whole family "flag a negative
    when ``s_neg - s_best > delta``" (``ratio`` is ``delta = ln(ratio)``) over every ``delta``
    (each distinct margin of the records is one cut), and, with ``top1``, the stricter family that
    flags at most the query's highest-scored negative. Returned, for the family: the best precision
    among cuts with recall >= ``recall`` and the best recall among cuts with precision >=
    ``precision`` (each with its ``delta`` and flag count; ``None`` where no cut reaches the bar),
    plus where the mined hidden positives rank among their query's negatives (1 = the query's
    top-scored negative). If no cut reaches both bars, no rule of this family on this score can.
    """
    from training.false_negatives import candidate_score

    marked: list[tuple[float, bool]] = []  # (s_neg - s_best, is a hidden positive), one per candidate flag
    ranks: list[int] = []
    for record in records:
        if not record.positives or not record.negatives:
            continue
        best = max(candidate_score(c, record, score) for c in record.positives)
        scored = sorted(((candidate_score(c, record, score) - best, c.docid in hidden.get(record.query_id, ()))
                         for c in record.negatives), reverse=True)
        ranks += [i + 1 for i, (_, is_hidden) in enumerate(scored) if is_hidden]
        marked += scored[:1] if top1 else scored
    total = len(ranks)
    marked.sort(key=lambda x: -x[0])
    cuts: list[dict[str, Any]] = []
    true = 0
    for i, (margin, is_hidden) in enumerate(marked):
        true += is_hidden
        if i + 1 < len(marked) and marked[i + 1][0] == margin:
            continue  # a cut can only fall between distinct margins
        cuts.append({"delta": round(margin, 4), "flagged": i + 1, "flagged_hidden": true,
                     "precision": round(true / (i + 1), 4), "recall": round(true / total, 4) if total else None})
    at_recall = [c for c in cuts if c["recall"] is not None and c["recall"] >= recall]
    at_precision = [c for c in cuts if c["precision"] >= precision and c["flagged_hidden"] > 0]
    return {
        "score": score, "top1": top1, "hidden_mined_as_negatives": total,
        "hidden_rank_median": float(np.median(ranks)) if ranks else None,
        "hidden_rank_1_share": round(sum(r == 1 for r in ranks) / total, 4) if total else None,
        f"best_precision_at_recall_{recall}": max(at_recall, key=lambda c: c["precision"], default=None),
        f"best_recall_at_precision_{precision}": max(at_precision, key=lambda c: c["recall"], default=None),
        "reaches_target": any(c["precision"] >= precision for c in at_recall),
    }


def frontiers(records: list, hidden: dict[str, set[str]]) -> dict[str, dict[str, Any]]:
    """:func:`operating_points` for each score, over all negatives and over each query's top one."""
    return {f"{label}{' / top-1 only' if top1 else ''}": operating_points(records, hidden, score, top1)
            for score, label in (("teacher", "teacher"), ("cross_encoder", "cross-encoder")) for top1 in (False, True)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=PROJECT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--base-index", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--hide", type=float, default=0.2, help="fraction of train:fit positives hidden")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-rule", choices=("gap", "ratio"), default="gap", help="the rule the run trains with")
    parser.add_argument("--runs-root", type=Path, default=PROJECT / "artifacts" / "distill-seeds")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "scifact-filter-check.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="check again even if --output already has this run's check")
    args = parser.parse_args(argv)
    if not 0 < args.hide < 1 or args.iterations < 1:
        parser.error("--hide must be in (0, 1) and --iterations >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from retrieval.datasets import load_dataset
    from training.data import load_training_file
    from training.distill import DistillConfig, distill
    from training.distill.datasets import hidden_positives
    from training.false_negatives import with_pseudo_positive

    load_start = list(os.getloadavg())
    name = f"filter-check-{args.train_rule}-h{args.hide}-s{args.seed}"
    out = args.runs_root / name
    settings = {**CORE, "dataset": str(args.dataset), "base_index": str(args.base_index), "teacher": str(args.teacher),
                "seed": args.seed, "sentence_weight": 1.0, "filter_mode": "dynamic", "filter_rule": args.train_rule,
                "hide_positives": args.hide, "iterations": args.iterations, "mine_bm25": "always"}
    if (out / "config.json").is_file():
        settings = json.loads((out / "config.json").read_text())["distill"]
    else:
        settings["score_cache_from"] = [str(d) for d in teacher_runs(args.runs_root)]
    if not args.force and args.output.is_file() and json.loads(args.output.read_text()).get("run_dir") == str(out) \
            and (out / "report.json").is_file():
        logger.info("%s: already checked (--force to check again)", args.output)
        return 0
    started = time.monotonic()
    report = distill(DistillConfig.from_dict(settings), out, resume=(out / "state.json").is_file(), show_progress=True)
    if not report.get("finished"):
        return 3
    fit = load_dataset(args.dataset, "train:fit")
    hidden = hidden_positives(fit.qrels, args.hide, args.seed)
    iterations = []
    for entry in report["iterations"]:
        t = entry["iteration"]
        _, records = load_training_file(out / f"iter-{t:02d}" / "annotated.jsonl")
        records = [with_pseudo_positive(r) for r in records]
        iterations.append({"iteration": t, "mined_by": "BM25 + base student" if t == 1 else f"BM25 + iteration {t - 1}'s student",
                           "annotate": entry.get("annotate"), "trained_filter": entry.get("filter"),
                           "dev": entry.get("dev"), "dev_unseen": entry.get("dev_unseen"),
                           "rules": check_rules(records, hidden), "frontiers": frontiers(records, hidden)})
        for rule, q in iterations[-1]["rules"].items():
            logger.info("iteration %d %s: flagged %d, precision %s, recall %s", t, rule, q["flagged"], q["precision"], q["recall"])
    result = {
        "kind": "filter-check", "dataset": str(args.dataset), "command": command_line(argv),
        "machine": {**machine_facts(args.threads), "load_average_at_start": [round(x, 2) for x in load_start],
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "run_dir": str(out), "settings": settings, "hide": args.hide, "seed": args.seed, "train_rule": args.train_rule,
        "hidden_positives": sum(len(v) for v in hidden.values()), "seconds_this_call": round(time.monotonic() - started, 1),
        "iterations": iterations,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
