"""RESULTS.md section for ``benchmarks/distill_seeds.py`` reports (kind ``distill-seeds``):
query-tower distillation variants over seeds, mean ± sd, full test split and unseen-positive subset."""

from __future__ import annotations

from typing import Any

#: Variant names as read in the table.
LABELS = {
    "supervised": "supervised only (InfoNCE over the whole corpus, no teacher)",
    "kd": "+ sentence KD, fused teacher, over each query's BM25 ∪ dense top-30",
    "kd-ce": "+ sentence KD, cross-encoder score alone",
    "kd-filter": "+ sentence KD (fused) + dynamic false-negative filter",
    "kd-filter2": "+ sentence KD (fused) + dynamic filter (gap rule), 2 iterations (re-mined with the student, re-scored)",
    "kd-mmse": "+ sentence KD (fused), MarginMSE over every pair of the list instead of the KL",
    "kd-mmse-w0.3": "+ sentence KD (fused), MarginMSE, weight 0.3",
    "kd-mmse-e12": "+ sentence KD (fused), MarginMSE, 12 epochs",
    "kd-e12": "+ sentence KD (fused, KL), 12 epochs",
    "kd-e20": "+ sentence KD (fused, KL), 20 epochs",
    "supervised-e12": "supervised only, 12 epochs",
    "kd-mmse-w3": "+ sentence KD (fused), MarginMSE, weight 3",
    "kd-t2": "+ sentence KD (fused), teacher temperature 2",
    "kd-w3": "+ sentence KD (fused), weight 3",
    "supervised-lr6e-5": "supervised only, lr 6e-5 (dev sweep)",
    "supervised-tau0.02": "supervised only, tau 0.02 (dev sweep)",
    "supervised-titles": "supervised only + 500 corpus titles as queries of their own passage (no teacher)",
    "kd-titles": "+ sentence KD (fused) + 500 corpus titles as teacher-labelled pseudo-queries (GPL-style)",
}


def _cell(entry: dict[str, Any], key: str) -> str:
    value = entry[key]
    return f"{value['mean']:.4f}" if value["sd"] is None else f"{value['mean']:.4f} ± {value['sd']:.4f}"


def render_distill_seeds(report: dict[str, Any], source: str) -> list[str]:
    base = report["base"]["test"]
    runs = report["runs"]
    first = next(iter(runs.values()))["test"]
    core = report["core"]
    # runs that all name one teacher say which (two tables of the same variants then tell apart)
    teachers = {r.get("teacher_fingerprint") for r in runs.values() if r["settings"].get("teacher")}
    teacher = f", teacher {next(iter(teachers))[:12]}" if len(teachers) == 1 and None not in teachers else ""
    lines = [
        f"### Query-tower distillation on SciFact, seeds (test: {first['queries']} queries; unseen-positive subset: "
        f"{first['unseen_queries']}){teacher}",
        "",
        *[f"Command: `{c}`  " for c in report.get("commands", [report["command"]])],
        f"Machine: {report['machine']['cpus']} CPU cores, {report['machine']['threads']} threads, load "
        f"{report['machine']['load_average_at_start']} at start. Source: `{source}`.",
        "",
        f"Core: query tower only (passage vectors frozen at the base index's), InfoNCE over all corpus vectors, "
        f"{core['queries_per_batch']} queries a step, lr {core['lr']} with {core['warmup']:.0%} warm-up and linear decay, "
        f"tau {core['tau']}, queries cut at {core['query_length']} tokens, {core['epochs']} epochs; the epoch kept is the "
        f"best on train:dev nDCG@10, the base (epoch 0) included. Unseen-positive subset: the test queries none of whose "
        f"positives is a train positive. Hybrid: z(BM25, unstemmed) + z(dense), 1:1, top 100 of each side.",
        "",
        "| variant | seeds | kept epochs | train:dev nDCG@10 | dense full nDCG@10 | dense unseen nDCG@10 | hybrid full nDCG@10 | hybrid unseen nDCG@10 | dense full R@100 |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| base all-MiniLM-L6-v2 (no training) | - | - | {report.get('base_dev', {}).get('nDCG@10', float('nan')):.4f} | {base['dense']['full']['nDCG@10']:.4f} | "
        f"{base['dense']['unseen']['nDCG@10']:.4f} | {base['hybrid']['full']['nDCG@10']:.4f} | "
        f"{base['hybrid']['unseen']['nDCG@10']:.4f} | {base['dense']['full']['R@100']:.4f} |",
    ]
    for variant, entry in report["summary"].items():
        lines.append(
            f"| {LABELS.get(variant, variant)} | {len(entry['seeds'])} | {entry['selected_epochs']} | {entry['dev_nDCG@10']:.4f} | "
            f"{_cell(entry, 'dense/full/nDCG@10')} | {_cell(entry, 'dense/unseen/nDCG@10')} | "
            f"{_cell(entry, 'hybrid/full/nDCG@10')} | {_cell(entry, 'hybrid/unseen/nDCG@10')} | {_cell(entry, 'dense/full/R@100')} |"
        )
    for variant, entry in report["summary"].items():
        if entry.get("iterations"):
            per = "; ".join(f"iteration {t}: {_cell(v, 'full')} / {_cell(v, 'unseen')}" for t, v in entry["iterations"].items())
            lines += ["", f"{LABELS.get(variant, variant)}, dense nDCG@10 (full / unseen) of each iteration's student: {per}; "
                          f"iteration kept on dev per seed: {entry['selected_iterations']}."]
    lines += ["", "Mean ± sample sd over seeds. Per run (dense nDCG@10, full / unseen):", ""]
    for name, run in runs.items():
        t = run["test"]["dense"]
        lines.append(f"- `{name}`: {t['full']['nDCG@10']:.4f} / {t['unseen']['nDCG@10']:.4f} (kept epoch "
                     f"{run['selected_epoch']}, dev {run['selected_dev']['nDCG@10']:.4f}, {run['seconds']} s"
                     + (f", teacher {run['teacher_fingerprint'][:12]}" if run.get("teacher_fingerprint") else "") + ")")
    lines.append("")
    return lines


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_filter_check(report: dict[str, Any], source: str) -> list[str]:
    """RESULTS.md section for ``benchmarks/filter_check.py`` (kind ``filter-check``): precision and
    recall of each false-negative rule against hidden positives, per iteration."""
    lines = [
        f"### False-negative filter check on SciFact train:fit ({report['hide']:.0%} of positives hidden, "
        f"{report['hidden_positives']} pairs; seed {report['seed']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpus']} CPU cores, {report['machine']['threads']} threads, load "
        f"{report['machine']['load_average_at_start']} at start. Source: `{source}`.",
        "",
        f"The run trains with the `{report['train_rule']}` rule; every rule is applied to the same annotated candidates "
        "of each iteration. Precision: flags that are hidden positives (a lower bound: unjudged relevant passages count "
        "as wrong); recall: hidden positives mined as negatives that were flagged. gap: global floor (10th percentile of "
        "positive scores) and best - 0.1 x (best - median) per query; ratio r: exp(s_neg - s_positive) > r (no floor).",
        "",
        "| iteration (mined by) | rule / score | flagged | flagged share of negatives | hidden mined as negatives | flagged hidden | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for it in report["iterations"]:
        for name, q in it["rules"].items():
            lines.append(f"| {it['iteration']} ({it['mined_by']}) | {name} | {q['flagged']} | {q['flagged_fraction']:.3f} | "
                         f"{q['hidden_mined_as_negatives']} | {q['flagged_hidden']} | {_fraction(q['precision'])} | {_fraction(q['recall'])} |")
    lines += ["", "A query whose every positive is hidden has nothing to train on and leaves the run, so only hidden positives "
              "of queries with another positive can be mined as negatives: recall is over those few pairs.", ""]
    if any("frontiers" in it for it in report["iterations"]):
        lines += _render_frontiers(report)
    return lines


def _cut(cut: dict[str, Any] | None) -> str:
    if cut is None:
        return "none reaches it"
    return f"{cut['precision']:.3f} / {cut['recall']:.3f} ({cut['flagged']} flags, delta {cut['delta']:+.2f})"


def _render_frontiers(report: dict[str, Any]) -> list[str]:
    """Every threshold of the family ``s_neg - s_best > delta`` at once: whether any reaches the target."""
    lines = [
        "Every threshold at once: the family \"flag a negative when s_neg - s_best > delta\" (ratio r is delta = ln r) "
        "swept over every delta, on all negatives and on each query's top-scored negative only. Hidden rank: where a "
        "mined hidden positive ranks among its query's negatives by that score (1 = the query's top negative).",
        "",
        "| iteration | score | hidden rank median | hidden ranked 1st | best precision at recall >= 0.8 (precision / recall) "
        "| best recall at precision >= 0.5 | precision >= 0.5 at recall >= 0.8 reachable |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in report["iterations"]:
        for name, f in it.get("frontiers", {}).items():
            lines.append(f"| {it['iteration']} | {name} | {f['hidden_rank_median']} | {_fraction(f['hidden_rank_1_share'])} | "
                         f"{_cut(f['best_precision_at_recall_0.8'])} | {_cut(f['best_recall_at_precision_0.5'])} | "
                         f"{'yes' if f['reaches_target'] else 'no'} |")
    return lines + [""]
