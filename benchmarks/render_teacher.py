"""RESULTS.md "Teacher" section: ``benchmarks/teacher_*.py`` reports."""

from __future__ import annotations

from render_common import machine_text
from retrieval.tables import markdown_table


def render_teacher_cost(report: dict, source: str) -> list[str]:
    """``benchmarks/teacher_cost.py``: cross-encoder teacher vs dense student, milliseconds per query."""
    t, s = report["teacher"], report["student"]
    return [
        f"### Teacher vs student cost per query ({report['queries']} queries, {report['pairs_per_query']} passages each)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.",
        "",
        *markdown_table(
            ["system", "p50 ms/query", "p90 ms/query", "mean ms/query"],
            [[f"teacher: cross-encoder scoring {report['pairs_per_query']} pairs ({t['head']} head, {t['max_length']} tokens)",
              t["p50_ms"], t["p90_ms"], t["mean_ms"]],
             [f"student: encode the query + {s['factory']} search top {s['top_k']}", s["p50_ms"], s["p90_ms"], s["mean_ms"]]],
            "lrrr",
        ),
        "",
        f"- The teacher costs **{report['teacher_over_student_p50']}x** the student per query (p50).",
        "",
    ]


def render_teacher_heads(report: dict, source: str) -> list[str]:
    """``benchmarks/teacher_heads.py``: loss per window of steps and dev figures of each cross-encoder head."""
    heads = report["heads"]
    windows = [w["steps"] for w in next(iter(heads.values()))["windows"]]
    config = heads["mean"]["config"]
    lines = [
        f"### Cross-encoder head: BERT pooler vs mean pooling (mean listwise loss per window of steps; chance {report['chance_loss']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.  ",
        f"Same backbone ({config['backbone']}), data, seed and learning rates (transformer {config['lr']}, head {config['head_lr']}); "
        f"{config['groups_per_step']} groups of 1 + {config['negatives']} a step, {config['max_length']} tokens, "
        f"{config['max_steps']} steps (learning rate decayed to 0 over them); dev: train:dev queries reranking "
        f"candidates within rank {config['dev_depth']}.",
        "",
    ]
    rows = [[head, *(f"{w['mean_loss']:.3f}" for w in h["windows"]), f"{h['dev']['nDCG@10']:.4f}", f"{h['dev']['MRR@10']:.4f}"]
            for head, h in heads.items()]
    lines += [*markdown_table(["head", *(f"steps {w}" for w in windows), "dev nDCG@10", "dev MRR@10"], rows), ""]
    return lines


def render_teacher_train(report: dict, source: str) -> list[str]:
    """``benchmarks/teacher_train.py``: one teacher's training run, its loss windows, dev figures and fitted fusion."""
    c = report["config"]
    minutes = report["train_seconds"] / 60
    lines = [
        f"### Teacher training: {report['name']} ({report['steps']} steps, {minutes:.0f} min of training)",
        "",
        f"Command: `{report['command']}`  ",
        f"Recorded by: `{report['recorded_by']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.  ",
    ]
    if report.get("note"):
        lines.append(f"Note: {report['note']}.  ")
    lines += [
        f"{c['backbone']}, {c['head']} head, {c['max_length']} tokens, {c['epochs']} epochs of groups of 1 + {c['negatives']} "
        f"({c['groups_per_step']} a step), lr {c['lr']} (head {c['head_lr']}); {report['fit_queries']} training queries, "
        f"{report['dev_queries']} dev queries (train:dev, reranking candidates within rank {c['dev_depth']}).",
        "",
        "Mean listwise loss (chance ln(1 + negatives)): "
        + ", ".join(f"steps {w['steps']}: {w['mean_loss']:.3f}" for w in report["loss_windows"]) + ".",
        "",
    ]
    rows = [[name, f"{metrics['nDCG@10']:.4f}", f"{metrics['MRR@10']:.4f}"] for name, metrics in report["dev_metrics"].items()]
    rows += [[f"cross_encoder after epoch {epoch['epoch'] + 1}", f"{epoch['nDCG@10']:.4f}", f"{epoch['MRR@10']:.4f}"]
             for epoch in report["dev_per_epoch"]]
    lines += markdown_table(["on train:dev", "nDCG@10", "MRR@10"], rows, "lrr")
    f = report["fusion"]
    if f:
        lines += [
            "",
            f"- Fitted fused teacher: cross-encoder {f['cross_encoder_weight']:.2f} / first stage {f['first_stage_weight']:.2f} "
            f"(dense {f['dense_weight']:.2f}, BM25 {f['bm25_weight']:.2f}); recorded in the model's `cross_encoder_config.json`.",
        ]
    lines.append("")
    return lines


TEACHER_RENDERERS = {
    "teacher_train": render_teacher_train,
    "teacher_heads": render_teacher_heads,
    "teacher_cost": render_teacher_cost,
}
