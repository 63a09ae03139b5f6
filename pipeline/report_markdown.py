"""The experiment report as the markdown section of ``benchmarks/RESULTS.md`` and ``REPORT.md``.

:func:`render_markdown` turns :func:`pipeline.report.collect`'s report (and links to its plots)
into lines; every table goes through :func:`retrieval.tables.markdown_table`.
"""

from __future__ import annotations

from typing import Any

from retrieval.tables import markdown_table

#: The column of the unseen-positive subset's nDCG@10 (``md2pr-evaluate --unseen-from``).
UNSEEN = "nDCG@10 unseen"


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
        if UNSEEN in columns:
            lines += ["*nDCG@10 unseen*: on the test queries none of whose positives is a training positive "
                      "(`md2pr-evaluate --unseen-from`), where document priors learnt from the training "
                      "positives cannot help.", ""]
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
