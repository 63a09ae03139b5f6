"""RESULTS.md "Retrieval quality" section (``md2pr-evaluate --output`` reports: any JSON with ``systems``)
and the "Experiments" section (``md2pr-experiment`` reports, kind ``experiment``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.report import render_markdown
from retrieval.tables import markdown_table

MEASURES = ["nDCG@10", "MRR@10", "R@50", "R@100", "R@1000"]

# Published figures quoted for comparison (not measured here).
REFERENCES = {
    "scifact": [
        ("BM25, BEIR paper (published)", {"nDCG@10": 0.665}),
        ("BM25 flat, Pyserini (published)", {"nDCG@10": 0.679}),
        ("all-MiniLM-L6-v2, MTEB (published)", {"nDCG@10": 0.645}),
    ],
    "dl19": [
        ("BM25 top-100 lists (published)", {"nDCG@10": 0.5058}),
        ("TAS-B (published)", {"nDCG@10": 0.7210}),
        ("SPLADE++ (published)", {"nDCG@10": 0.7308}),
    ],
}


def _row(name: str, metrics: dict[str, float]) -> list[str]:
    """A system's cells: its name, then each of :data:`MEASURES` to 4 decimals (blank when absent)."""
    return [name, *(f"{metrics[m]:.4f}" if m in metrics else "" for m in MEASURES)]


def render_evaluation(report: dict, source: str) -> list[str]:
    """One ``md2pr-evaluate --output`` report: its systems' measures, then the published references for its dataset."""
    dataset = Path(report["dataset"]).name
    lines = [
        f"### {dataset} / {report['split']} ({report['queries']} queries, depth {report['depth']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpus']} CPU cores, {report['machine']['threads']} threads. Source: `{source}`.",
        *(
            [
                "",
                "The corpus is the union of the DL pools in the directory (not the full MS MARCO collection): "
                "first-stage rows compare with each other only; published rows are on the full collection.",
            ]
            if dataset.startswith("dl")
            else []
        ),
        "",
    ]
    unseen = report.get("unseen_positive")  # md2pr-evaluate --unseen-from: each system's figures on that subset too
    unseen_measures = ["nDCG@10", "MRR@10", "R@100"] if unseen else []
    if unseen:
        lines += [f"Unseen-positive subset (columns marked *unseen*): the {unseen['queries']} {report['split']} queries "
                  f"none of whose positives is a {unseen['from']} positive.", ""]
    rows = []
    for name, system in report["systems"].items():
        config = system["config"]
        label = name
        if name == "dense":
            label += f" ({config['encoder']['source']}, {config['factory']}, {config['encoder_config']['pooling']} pooling)"
        elif name == "bm25":
            bm = config["bm25"]
            label += f" (k1={bm['k1']}, b={bm['b']}, stopwords={bm['stopwords']}, stemmer={bm['stemmer']})"
        elif name == "hybrid":
            f = config["fusion"]
            label += (f" ({f['method']}, dense_weight={f['dense_weight']}, bm25_weight={f['bm25_weight']}, "
                      f"depths {f['dense_depth']}/{f['bm25_depth']})")
        elif system.get("kind") == "rerank":
            label += _rerank_label(system["rerank"])
        on_unseen = system.get("metrics_unseen") or {}
        rows.append(_row(label, system["metrics"]) + [f"{on_unseen[m]:.4f}" if m in on_unseen else "" for m in unseen_measures])
    rows += [_row(name, metrics) + [""] * len(unseen_measures) for name, metrics in REFERENCES.get(dataset, [])]
    lines += [*markdown_table(["system", *MEASURES, *(f"{m} *unseen*" for m in unseen_measures)], rows), ""]
    return lines


def _rerank_label(rerank: dict) -> str:
    ce = rerank["cross_encoder"]
    score = "fused teacher score" if rerank["score"] == "fused" else "cross-encoder score"
    text = f" (top {rerank['depth']} of {rerank['first_stage']} by the {score}; {ce['head']} head, {ce['max_length']} tokens"
    if rerank["score"] == "fused":
        f = rerank["fusion"]
        text += f"; weights ce {f['cross_encoder_weight']:.2f} / first stage {f['first_stage_weight']:.2f}"
    return text + ")"


def render_experiment(report: dict, source: str) -> list[str]:
    """A ``benchmarks/results/experiment-*.json`` (``pipeline.report.collect`` plus ``"plots"``)."""
    return render_markdown(report, report.get("plots") or {}, source)

EXPERIMENT_RENDERERS = {"experiment": render_experiment}
