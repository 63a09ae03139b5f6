"""RESULTS.md "Hybrid retrieval" section: ``benchmarks/hybrid_http.py``, ``md2pr-fit-fusion`` and
``benchmarks/bm25_tokenisation.py`` reports."""

from __future__ import annotations

from pathlib import Path

from render_common import machine_text
from retrieval.tables import markdown_table


def render_hybrid_http(report: dict, source: str) -> list[str]:
    """``benchmarks/hybrid_http.py``: quality and latency of each search mode over HTTP."""
    dataset = Path(report["dataset"]).name
    fusion = report["fusion"]
    lines = [
        f"### Search modes over HTTP: {dataset} / {report['split']} ({report['queries']} queries, top {report['top_k']}), "
        f"queries encoded by `{report['model']}`",
        "",
        f"Command: `{report['command']}`  ",
        f"{machine_text(report)} Index version `{report['index_version']}`, encoder `{report['model']}`"
        + (f" on `{report['backend']}`" if report.get("backend") else "") + ", "
        f"fusion {fusion['method']} dense_weight={fusion['dense_weight']} bm25_weight={fusion['bm25_weight']} "
        f"depths {fusion['dense_depth']}/{fusion['bm25_depth']}. Source: `{source}`.",
        "",
    ]
    unseen = report.get("unseen_positive")
    rows = [[mode, *(f"{result['metrics'][m]:.4f}" for m in ("nDCG@10", "MRR@10", "R@50", "R@100")),
             *([f"{result['metrics_unseen'][m]:.4f}" for m in ("nDCG@10", "R@100")] if unseen else []),
             *(f"{result['latency_ms'][k]:.1f}" for k in ("client_p50", "client_p95", "server_p50"))]
            for mode, result in report["modes"].items()]
    header = ["mode", "nDCG@10", "MRR@10", "R@50", "R@100", *(["unseen nDCG@10", "unseen R@100"] if unseen else []),
              "client p50 ms", "client p95 ms", "server p50 ms"]
    if unseen:
        lines += [f"Unseen: the {unseen['queries']} queries none of whose positives is a positive of {unseen['from']}.", ""]
    lines += [*markdown_table(header, rows), ""]
    return lines


def render_fusion_fit(report: dict, source: str) -> list[str]:
    """``md2pr-fit-fusion``: the fitted fusion weights and the grid they were chosen from."""
    chosen = report["chosen"]
    unseen_from = report.get("unseen_from")
    if unseen_from:  # the grid records the whole split, its unseen-positive queries and their mean
        base = report["objective"].removesuffix(" mean")
        grid = ", ".join(f"{g['dense_weight']:g}: {g[base]:.4f} / {g[base + ' unseen']:.4f} / {g[report['objective']]:.4f}"
                         for g in report["grid"])
        grid_label = f"dense_weight: {base} all / unseen-positive w.r.t. {unseen_from} / mean"
    else:
        grid = ", ".join(f"{g['dense_weight']:g}: {g[report['objective']]:.4f}" for g in report["grid"])
        grid_label = f"dense_weight: {report['objective']}"

    model = f" for `{report['model']}`" if report.get("model") else ""
    stemmer = (report.get("bm25") or {}).get("stemmer", "none") if report.get("bm25") else None
    return [
        f"### Fusion weights fitted on {Path(report['dataset']).name} / {report['split']}{model}"
        + (f" (BM25 stemmer {stemmer or 'none'})" if report.get("bm25") else ""),
        "",
        f"Command: `{report['command']}`. Source: `{source}`.",
        "",
        f"Chosen: dense_weight={chosen['dense_weight']}, bm25_weight={chosen['bm25_weight']} "
        f"({report['objective']} {report['chosen_objective']:.4f} on the fitting split); "
        f"published as version `{report.get('published', '(not published)')}`.",
        f"Grid ({grid_label}): {grid}.",
        "",
    ]


def render_bm25_tokenisation(report: dict, source: str) -> list[str]:
    """``benchmarks/bm25_tokenisation.py``: BM25 (and the 1:1 hybrid) by stemmer, per split."""
    bm25 = report["bm25"]
    best = []
    for split in (s for s in report["splits"] if s["choose"]):
        ranked = sorted(split["rows"], key=lambda r: -r["bm25"]["nDCG@10"])
        top = ranked[0]["bm25"]["nDCG@10"]
        # within 0.001 of the best: a tie at this many queries (0.001 is far inside one standard error)
        tied = [r for r in ranked if top - r["bm25"]["nDCG@10"] <= 0.001]
        best.append(f"{split['name']}: " + " / ".join(f"{r['stemmer'] or 'none'} {r['bm25']['nDCG@10']:.4f}" for r in tied)
                    + (" (tied within 0.001)" if len(tied) > 1 else ""))
    chosen = "; ".join(best)
    lines = [
        "### BM25 stemming, chosen on training queries",
        "",
        f"Command: `{report['command']}`  ",
        f"{machine_text(report)}. Source: `{source}`.",
        "",
        f"BM25: bm25s {bm25['method']}, k1={bm25['k1']}, b={bm25['b']}, stop words {bm25['stopwords']}; stemmer by "
        "PyStemmer (`english` is Snowball's Porter2). Hybrid: z(BM25) + z(dense), "
        f"{report['fusion']['dense_weight']:g}:{report['fusion']['bm25_weight']:g}, top "
        f"{report['fusion']['dense_depth']} of each side, dense from `{report['base_index']}`. Unseen: the test queries "
        "none of whose positives is a train positive. Best BM25 nDCG@10 on the splits the choice is made on "
        f"(*choose*): {chosen}. The default (`BM25Config`) is `english`.",
        "",
    ]
    columns = [("bm25", "nDCG@10", "BM25 nDCG@10"), ("bm25", "R@100", "BM25 R@100"),
               ("bm25_unseen", "nDCG@10", "BM25 unseen nDCG@10"), ("hybrid", "nDCG@10", "hybrid nDCG@10"),
               ("hybrid_unseen", "nDCG@10", "hybrid unseen nDCG@10")]
    rows = []
    for split in report["splits"]:
        for row in split["rows"]:
            rows.append([f"{split['name']}{' (*choose*)' if split['choose'] else ''}", str(split["queries"]),
                         row["stemmer"] or "none",
                         *(f"{row[key][m]:.4f}" if key in row else "" for key, m, _ in columns)])
    lines += [*markdown_table(["split", "queries", "stemmer", *(title for _, _, title in columns)], rows), ""]
    return lines


HYBRID_RENDERERS = {"hybrid_http": render_hybrid_http, "fusion_fit": render_fusion_fit,
                    "bm25-tokenisation": render_bm25_tokenisation}
