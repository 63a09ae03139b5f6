"""Regenerate ``benchmarks/RESULTS.md`` from the JSON outputs in ``benchmarks/results/``.

Every figure in RESULTS.md comes from one of those files, each of which records the exact
command that produced it. Run: ``python benchmarks/render_results.py`` (``--output FILE`` to write
elsewhere, e.g. to check a change without touching RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the project's packages, when run as a script from anywhere
sys.path.insert(0, str(HERE))  # its sibling renderers, also when loaded by path (tests)

from pipeline.report import render_markdown  # noqa: E402
from retrieval.tables import markdown_table  # noqa: E402
from render_distill_seeds import render_distill_seeds, render_filter_check  # noqa: E402  (beside this file)

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
        rows.append(_row(label, system["metrics"]))
    rows += [_row(name, metrics) for name, metrics in REFERENCES.get(dataset, [])]
    lines += [*markdown_table(["system", *MEASURES], rows), ""]
    return lines


def _machine(report: dict) -> str:
    m = report["machine"]
    load = ", ".join(str(x) for x in m.get("load_average_at_start", []))
    return f"{m['cpus']} CPU cores ({m.get('cpu_model') or 'unknown CPU'}), {m['threads']} threads, load average at start {load}"


def render_service_load(report: dict, source: str) -> list[str]:
    base = report["in_process"]
    lines = [
        f"### /search latency and throughput ({report['queries']['count']} real queries: {', '.join(report['queries']['sources'])})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.  ",
        f"Index `{report['index']}`, top_k {report['top_k']}, return_text {str(report['return_text']).lower()}, "
        f"server settings {report.get('server_env') or 'defaults'}; "
        f"closed loop over loopback (httpx client on the same machine). In-process `Retriever.search`, one query "
        f"at a time: p50 {base['p50_ms']} ms, mean {base['mean_ms']} ms ({base['queries']} queries).",
        "",
        *markdown_table(
            ["concurrency", "QPS", "p50 ms", "p95 ms", "p99 ms", "errors", "mean batch (queries)"],
            ([x["concurrency"], x["qps"], x["p50_ms"], x["p95_ms"], x["p99_ms"], x["errors"], x["mean_batch_queries"]]
             for x in report["levels"]),
        ),
        "",
    ]
    if "ratio_c1_p50_to_in_process_p50" in report:
        lines.append(f"- p50 at concurrency 1 / in-process p50: **{report['ratio_c1_p50_to_in_process_p50']}x** (goal <= 1.5x).")
    b = report["batching"]
    lines.append(
        f"- Micro-batching at concurrency {b['concurrency']} (median of {len(b['runs']['on'])} alternated runs): "
        f"on {b['median_qps_on']} QPS, off {b['median_qps_off']} QPS, **gain {b['gain']}x**."
    )
    o = report["overload"]
    lines.append(
        f"- Overload, {o['concurrency']} clients against a queue of {o['queue_max_queries']} queries: statuses {o['statuses']}; "
        f"429s without Retry-After: {o['429_without_retry_after']}."
    )
    if "encode_in_server" in report:
        e, t = report["encode_in_process"], report["encode_in_server"]
        lines.append(
            f"- Encoder time of one query, side by side: in-process p50 {e['main_thread_p50_ms']} ms (on a one-thread "
            f"executor, as the server runs it: {e['compute_thread_p50_ms']} ms); inside the server (`Server-Timing`, one "
            f"client) {t['encode_p50_ms']} ms, **{t['encode_inflation']}x**; the server's queue {t['queue_p50_ms']} ms, "
            f"search {t['search_p50_ms']} ms."
        )
    if "hybrid_cost" in report:
        h = report["hybrid_cost"]
        lines.append(
            f"- One client, dense vs hybrid (client round trip p50, interleaved chunks): {h['dense_client_p50_ms']} ms vs "
            f"{h['hybrid_client_p50_ms']} ms: **hybrid costs {h['extra_ms']} ms more**."
        )
    if "admission" in report:
        a = report["admission"]
        lines += [
            "",
            f"Admission by expected wait (budget `MD2PR_MAX_QUEUE_WAIT_MS` = {a['max_queue_wait_ms']} ms, queue "
            f"{a['queue_max_queries']} queries):",
            "",
            *markdown_table(
                ["clients", "accepted QPS", "accepted p50 ms", "accepted p99 ms", "share answered 429", "other errors"],
                ([x["concurrency"], x["qps"], x["p50_ms"], x["p99_ms"], x["share_429"], x["errors"] - x["statuses"].get("429", 0)]
                 for x in a["levels"]),
            ),
        ]
    lines.append("")
    return lines


def render_service_soak(report: dict, source: str) -> list[str]:
    rss = report["rss_mb"]
    return [
        f"### Soak: {report['duration_s']:.0f} s of mixed traffic ({', '.join(report['mix'])}) from {report['clients']} clients, a hot swap every {report['reload_every_s']:.0f} s",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}; load average at end {', '.join(str(x) for x in report['load_average_at_end'])}. Source: `{source}`.",
        "",
        f"- Resident memory (the server's `process_resident_memory_bytes`, every {report['sample_every_s']:.0f} s): "
        f"{rss['first']} MB at start, {rss['after_warmup']} MB after warm-up, {rss['last']} MB at the end (max {rss['max']} MB); "
        f"**slope after warm-up {report['slope_mb_per_min_after_warmup']} MB/min**, over the last half "
        f"{report['slope_mb_per_min_last_half']} MB/min.",
        f"- Requests: {report['requests']}, **failed: {report['failed']}**; reloads {report['reloads']}; "
        f"p50 ms by kind {report['p50_ms']}.",
        "",
    ]


def render_peer_txtai(report: dict, source: str) -> list[str]:
    ip = report["in_process"]
    settings = ", ".join(f"{k}={v}" for k, v in report["our_settings"].items()) or "defaults"
    lines = [
        f"### This service vs txtai {report['txtai_version']}'s API, side by side ({report['queries']['count']} {report['queries']['source']}, top {report['top_k']}, no text)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}; load average at end {', '.join(str(x) for x in report['load_average_at_end'])}. Source: `{source}`.  ",
        f"Both servers: same model, exact inner-product index of the same passages, thread environment "
        f"{report['thread_env']}; our settings: {settings}. Each cell is the median of {report['repeats']} alternated "
        f"runs of {report['duration_s']:.0f} s. Top-10 overlap of the two servers' answers: {report['top10_overlap']['mean']} "
        f"({report['top10_overlap']['queries']} queries). In-process limit (encoder forward + FAISS search, no HTTP): "
        f"p50 {ip['p50_ms']} ms, {ip['qps_one_at_a_time']} QPS one at a time.",
        "",
    ]
    rows = [[r["concurrency"], o["qps"], o["p50_ms"], o["p99_ms"], t["qps"], t["p50_ms"], t["p99_ms"],
             f"**{r['qps_ratio']}x**", f"**{r['p50_speedup']}x**", f"{o['errors']} / {t['errors']}"]
            for r in report["levels"] for o, t in [(r["ours"], r["txtai"])]]
    lines += [*markdown_table(["clients", "ours QPS", "ours p50 ms", "ours p99 ms", "txtai QPS", "txtai p50 ms", "txtai p99 ms",
                               "QPS ours/txtai", "p50 txtai/ours", "errors ours / txtai"], rows), ""]
    return lines


def render_service_swap(report: dict, source: str) -> list[str]:
    times = [s["took_ms"] for s in report["swaps"]]
    return [
        f"### Index swaps under load ({report['clients']} clients, {report['duration_s']:.0f} s, {report['swaps_requested']} swaps via {report['via']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.",
        "",
        f"- Requests: {report['requests']}, **failed: {report['failed']}** ({report['statuses']}); {report['qps']} QPS, "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms.",
        f"- Swaps with `/info` naming the new version afterwards: **{report['swaps_completed']}/{report['swaps_requested']}**; "
        f"answers from the old version after a swap completed: {report['stale_answers']}; swap time (ms): {times}.",
        f"- Answers by version: {report['answers_by_version']}.",
        "",
    ]


def render_service_fuzz(report: dict, source: str) -> list[str]:
    lines = [
        "### Schemathesis fuzzing of the OpenAPI document",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.",
        "",
    ]
    if "phases" in report:  # the `schemathesis run` command (every phase and check)
        phases = ", ".join(f"{name} {status}" for name, status in report["phases"].items())
        kinds = ", ".join(f"{f['code']} {f['title']} x{f['count']}" for f in report["failure_kinds"]) or "none"
        lines += [
            f"- `{report['schemathesis_command']}`",
            f"- Phases: {phases}; {report['test_cases']['generated']} test cases; failure kinds: {kinds}; "
            f"errors: {len(report['errors'])}.",
        ]
        if "documented_exceptions" in report:
            lines.append(f"- Answers passed as documented exceptions: {report['documented_exceptions'] or 'none'}.")
    answers = report["by_operation_and_status"]
    wrong_method = {key: n for key, n in answers.items() if key.endswith(" 405")}
    shown = {key: n for key, n in answers.items() if key not in wrong_method}
    lines += [
        f"- **{report['requests']} generated requests, {report['server_errors']} server errors**, "
        f"{report['check_failures']} failed checks ({', '.join(report['checks'])}).",
        f"- By operation and status: {shown}"
        + (f"; and 405 for {sum(wrong_method.values())} requests with a method the path lacks." if wrong_method else "."),
        "",
    ]
    return lines


def _rerank_label(rerank: dict) -> str:
    ce = rerank["cross_encoder"]
    score = "fused teacher score" if rerank["score"] == "fused" else "cross-encoder score"
    text = f" (top {rerank['depth']} of {rerank['first_stage']} by the {score}; {ce['head']} head, {ce['max_length']} tokens"
    if rerank["score"] == "fused":
        f = rerank["fusion"]
        text += f"; weights ce {f['cross_encoder_weight']:.2f} / first stage {f['first_stage_weight']:.2f}"
    return text + ")"


def render_teacher_cost(report: dict, source: str) -> list[str]:
    t, s = report["teacher"], report["student"]
    return [
        f"### Teacher vs student cost per query ({report['queries']} queries, {report['pairs_per_query']} passages each)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.",
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
    heads = report["heads"]
    windows = [w["steps"] for w in next(iter(heads.values()))["windows"]]
    config = heads["mean"]["config"]
    lines = [
        f"### Cross-encoder head: BERT pooler vs mean pooling (mean listwise loss per window of steps; chance {report['chance_loss']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.  ",
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
    c = report["config"]
    minutes = report["train_seconds"] / 60
    lines = [
        f"### Teacher training: {report['name']} ({report['steps']} steps, {minutes:.0f} min of training)",
        "",
        f"Command: `{report['command']}`  ",
        f"Recorded by: `{report['recorded_by']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.  ",
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


def render_index_encoding(report: dict, source: str) -> list[str]:
    c, med, runs = report["config"], report["median_passages_per_s"], report["runs_passages_per_s"]
    lines = [
        f"### Encoding throughput: build job vs SentenceTransformer.encode ({c['passages']} SciFact passages)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.  ",
        f"Same model ({c['model']}), batch size {c['batch_size']}, max length {c['max_length']} tokens, same process; "
        f"{len(runs['sentence_transformers'])} runs each, alternated.",
        "",
    ]
    if "backends" not in report:  # a report from before encoder backends: the torch build job only
        met = "met" if report["speedup"] >= report["goal"] else "**not met**"
        return lines + [
            *markdown_table(["encoder", "median passages/s", "runs"],
                            [["build job (`PassageEncoder`)", med["ours"], runs["ours"]],
                             ["`SentenceTransformer.encode`", med["sentence_transformers"], runs["sentence_transformers"]]], "lrl"),
            "",
            f"- Speedup **{report['speedup']}x** (goal >= {report['goal']}x: {met}); max abs difference of the vectors "
            f"{report['max_abs_diff']:.2e} (identical within 1e-4: {report['vectors_identical']}).",
            "",
        ]
    rows = [[f"build job, `--backend {backend}`", row["median_passages_per_s"],
             f"{row['speedup']}x" + ("" if row["speedup"] >= report["goal"] else " (not met)"),
             f"{row['max_abs_diff']:.2e}", f"{row['min_cosine']:.6f}", runs[backend]]
            for backend, row in report["backends"].items()]
    rows.append(["`SentenceTransformer.encode`", med["sentence_transformers"], "1x", "", "", runs["sentence_transformers"]])
    lines += [
        *markdown_table(["encoder", "median passages/s", f"speedup (goal >= {report['goal']}x)", "max abs diff", "min cosine", "runs"],
                        rows, "lrrrrl"),
        "",
        "Max abs diff / min cosine: the backend's vectors against sentence-transformers' (torch) on the same passages.",
        "",
    ]
    return lines


def render_backend_parity(report: dict, source: str) -> list[str]:
    lines = [
        f"### Encoder backends: parity with torch and single-query latency ({report['model']})",
        "",
        f"Command: `{report['command']}`  ",
        # threads differ per latency row (the parity check ran at the largest count)
        f"Machine: {_machine({**report, 'machine': {'threads': '1 / 2', **report['machine']}})}. Source: `{source}`.  ",
        f"Export: {report['export']['exporter']}.",
        "",
        *markdown_table(
            ["backend", "max abs diff (queries / passages)", "min cosine", "nDCG@10 both sides", "nDCG@10 query side",
             "torch nDCG@10", "parity"],
            ([name, f"{p['max_abs_diff']['query']:.1e} / {p['max_abs_diff']['passage']:.1e}", f"{min(p['min_cosine'].values()):.6f}",
              f"{p['ndcg_at_10']['both_sides']:.4f}", f"{p['ndcg_at_10']['query_only']:.4f}", f"{p['ndcg_at_10']['torch']:.4f}",
              "passed" if p["passed"] else "**failed**"] for name, p in report["parity"].items()),
            "lrrrrrl",
        ),
    ]
    first = next(iter(report["parity"].values()), None)
    if first:
        lines += ["", f"Parity data: {Path(first['dataset']).name} {first['split']} ({first['queries']} queries, "
                      f"{first['passages']} passages); limits: fp32 max abs <= {first['limits'].get('max_abs') or 1e-4}, "
                      f"nDCG@10 drop <= {first['limits']['max_ndcg_drop']} (both sides and query side)."]
    lat = report["latency"]
    lines += [
        "",
        f"In-process `encode_queries([q])` latency, {lat['queries']} (tokenise + forward + pool + normalise):",
        "",
        *markdown_table(["backend", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "calls"],
                        ([row["backend"], row["threads"], row["p50_ms"], row["p90_ms"], row["p99_ms"], row["mean_ms"], row["calls"]]
                         for row in lat["per_config"]), "lrrrrrr"),
    ]
    fastest = lat["fastest_passing"]
    lines += ["", f"- Fastest backend that passed parity: **{fastest['backend']}** at {fastest['threads']} thread(s), "
                  f"p50 {fastest['p50_ms']} ms.", ""]
    return lines


def _params_text(params: dict) -> str:
    """Search parameters as ``name=value, ...`` (``—`` for none)."""
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "—"


def _build_parts(family: dict) -> str:
    """A build's phases in seconds, ``train / add / gate`` (``—`` for a phase not recorded)."""
    return " / ".join(str(family.get(k) if family.get(k) is not None else "—") for k in ("train_s", "add_s", "gate_s"))


def render_index_families(report: dict, source: str) -> list[str]:
    c, q = report["corpus"], report["queries"]
    lines = [
        f"### Index families on {c['passages']:,} real passages ({c['source']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.  ",
        f"Encoder {c['encoder']} ({c['dimension']} dims); {q['count']} real queries ({q['source']}). Recall@10 is against exact "
        "search for those queries, at the search parameters the build's quality gate tuned (target 0.95 recall@10 on "
        f"its own queries: {report['families'][0].get('gate_queries') or 'held-aside passage vectors'}). Latency: one query "
        f"per call, top 10, {report['machine']['threads']} FAISS thread(s). Peak RSS of the whole run {report['peak_rss_mb']:,.0f} MB.",
        "",
    ]
    rows = [[f"`{f['factory']}`", _params_text(f["params"]), f"{f['recall_at_10']:.3f}",
             f"{f['gate_recall_at_10']:.3f}", f["p50_ms"], f["p95_ms"], f["batch_qps"], f["index_mb"], f["bytes_per_vector"],
             f["build_s"]] for f in report["families"]]
    lines += [*markdown_table(["factory", "default params", "recall@10 (queries)", "recall@10 (gate)", "p50 ms", "p95 ms",
                               "batch QPS", "index MB", "bytes/vector", "build s"], rows, "llrrrrrrrr"), ""]
    return lines


def render_index_scale(report: dict, source: str) -> list[str]:
    v = report["vectors"]
    lines = [
        f"### Build job at {v['count']:,} vectors ({v['dimension']} dims, {v['kind']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}, {report['machine']['memory_gb']} GiB memory. Source: `{source}`.  ",
        "Each family is assembled from encoded shards by the build job in its own process (training on a sample, "
        "adding shard by shard, stored vectors, quality gate with tuning on held-aside vectors, as there is no text); "
        "peak RSS is that process's.",
        "",
    ]
    rows = []
    for f in report["families"]:
        params, parts = _params_text(f["params"]), _build_parts(f)
        rows.append([f"`{f['factory']}`", params, f"{f['gate_recall_at_10']:.3f}", f"{f['build_s']} ({parts})", f["index_gb"],
                     f["peak_rss_gb"], f["p50_ms"], f["p95_ms"]])
    lines += [*markdown_table(["factory", "params", "gate recall@10", "build s (train / add / gate)", "index GiB", "peak RSS GiB",
                               "p50 ms", "p95 ms"], rows, "llrlrrrr"), ""]
    return lines


def render_index_scale_ann(report: dict, source: str) -> list[str]:
    """``benchmarks/ann_1m.py``: families at 1M real-shaped vectors, read into memory and memory-mapped, and replicas."""
    v, q = report["vectors"], report["vectors"]["queries"]
    shape = v["shape_check"]
    lines = [
        f"### Approximate families at {v['count']:,} real-shaped vectors, memory-mapped serving and replicas",
        "",
        f"Command: `{report['command']}` (run stage by stage)  ",
        f"Machine: {_machine(report)}, {report['machine']['memory_gb']} GiB memory. Source: `{source}`.  ",
        f"Vectors: {v['recipe']} (noise {v['noise']}; {v['seeds']:,} seeds from `{v['seed_source']}`). Median top-1 / "
        f"top-10 score of the test claims: {shape['test_query_top1_score_synthetic_1m']} / {shape['test_query_top10_score_synthetic_1m']} "
        f"over the {v['count']:,} ({shape['test_query_top1_score_real_5183']} / {shape['test_query_top10_score_real_5183']} over the 5,183 real "
        f"passages); median nearest-neighbour cosine of a passage {shape['passage_nn_cosine_synthetic_in_50k']} within 50k synthetic "
        f"({shape['passage_nn_cosine_real_5183']} among the real), mean pair cosine {shape['passage_mean_cosine_synthetic']} "
        f"({shape['passage_mean_cosine_real']} real).  ",
        f"Queries: the build's quality gate tunes on {q['gate']} (target recall@10 0.95); every recall@10 below is on "
        f"{q['measured']}, against exact search over all of them. Latency: `IndexArtifact.search`, one query per call, top 10, "
        "1 FAISS thread (search). Build: `index_build.build.assemble` in its own process (all cores); peak RSS is that process's.",
        "",
        "p50 / p95 ms in three ways: the index read into RAM; memory-mapped as `IndexArtifact.open(mmap=True)` opens it "
        "(IVF lists as FAISS `OnDiskInvertedLists`, whose 32 prefetch threads start on every search); memory-mapped with "
        "`prefetch_nthread = 0` (IVF only).",
        "",
    ]
    rows = []
    for f in report["families"]:
        params = _params_text(f["params"])
        ram, mm, nopf = f.get("ram") or {}, f.get("mmap") or {}, f.get("mmap-noprefetch") or {}
        parts = _build_parts(f)
        lat = lambda m: f"{m['p50_ms']} / {m['p95_ms']}" if m else "—"  # noqa: E731
        rows.append([f"`{f['factory']}`", params, f"{ram.get('recall_at_10', float('nan')):.3f}", lat(ram), lat(mm), lat(nopf),
                     f"{f['build_s']} ({parts})", f["index_gib"], f["bytes_per_vector"],
                     f"{f['peak_rss_gb_build']} / {ram.get('peak_rss_gb', '—')}"])
    lines += markdown_table(["factory", "served params", "recall@10", "p50 / p95 ms RAM", "mmap", "mmap, no prefetch",
                             "build s (train / add / gate)", "index GiB", "bytes/vector", "peak RSS GiB build / serve"],
                            rows, "llrrrrlrrr")
    lines += ["", "Recall@10 / p50 ms by search parameter (RAM):", ""]
    for f in report["families"]:
        sweep = (f.get("ram") or {}).get("sweep") or []
        shown = ", ".join(f"{','.join(f'{k}={val}' for k, val in s['params'].items())}: {s['recall_at_10']:.3f} / {s['p50_ms']}" for s in sweep)
        lines.append(f"- `{f['factory']}`: {shown}")
    if report.get("replicas"):
        r = report["replicas"]
        lines += [
            "",
            f"Replicas of `{r['factory']}` on one host: processes that open the index as the service does "
            "(`IndexArtifact.open`, no query encoder) and search all 1,109 claims, then `/proc/<pid>/smaps_rollup` "
            "of each (GiB). RSS counts a shared page in every process that maps it; PSS divides it among them.",
            "",
        ]
        runs = r["runs"] + ([r["bare_process"]] if r.get("bare_process") else [])
        rows = []
        for run in runs:
            how = "memory-mapped" if run["mmap"] else "read into RAM"
            if run is r.get("bare_process"):
                how = "no index (baseline)"
            rows.append([how, run["replicas"], max(run["rss_gb"]), max(run["pss_gb"]), max(run["private_gb"]),
                         run["total_rss_gb"], run["total_pss_gb"]])
        lines += markdown_table(["opened", "replicas", "RSS each", "PSS each", "private each", "total RSS", "total PSS"],
                                rows, "lrrrrrr")
    if report.get("targets"):
        shown = ", ".join(f"{name}: {'met' if ok else '**missed**'}" for name, ok in report["targets"].items())
        lines += ["", f"Targets for `{report['default_family']}`: {shown}."]
    lines.append("")
    return lines


def render_index_resume(report: dict, source: str) -> list[str]:
    r, w = report["resumed_run"], report["uninterrupted_run"]
    same = ", ".join(f"{k} {'identical' if v else '**differs**'}" for k, v in report["identical"].items())
    return [
        f"### kill -9 in the middle of a build, then the same command ({report['passages']:,} SciFact passages)",
        "",
        f"Command: `{report.get('script', report['command'])}`, which runs `{report['command']}` three times  ",
        f"Machine: {_machine(report)}. Source: `{source}`.",
        "",
        f"- Killed with {report['killed_with']} after {report['killed_after_s']} s, with "
        f"{report['passages_in_finished_shards_at_kill']} passages in finished shards.",
        f"- The same command again: {r['reused']} passages reused, {r['encoded']} encoded, {r['seconds']} s; "
        f"an uninterrupted build: {w['encoded']} encoded, {w['seconds']} s.",
        f"- Published versions compared: {same}.",
        "",
    ]


def render_index_engines(report: dict, source: str) -> list[str]:
    local, ray = report["runs"]["local"], report["runs"]["ray"]
    return [
        f"### Encoding engines: local vs Ray Data ({report['corpus']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Source: `{source}`.",
        "",
        "| engine | workers | passages/s (encoding) | encode s | whole command s |",
        "|---|---|---|---|---|",
        f"| local | {local['workers']} threads | {local['passages_per_s']} | {local['encode_s']} | {local['command_wall_s']} |",
        f"| ray (local cluster) | {ray['workers']} actors | {ray['passages_per_s']} | {ray['encode_s']} | {ray['command_wall_s']} |",
        "",
        f"Ray / local throughput: {report['ray_over_local_throughput']}x; vectors identical: "
        f"{'yes' if report['vectors_identical'] else 'no (max abs difference ' + str(report['max_abs_difference']) + ')'}. "
        f"Shards of {report['shard_size']}, batches of {report['batch_size']}; Ray's time includes starting its actors "
        "and loading the model in each.",
        "",
    ]


def render_milvus_backend(report: dict, source: str) -> list[str]:
    q, http, swap = report["quality"], report["http"], report["swap"]
    f, m = q["faiss_flat"], q["milvus_flat"]
    lines = [
        f"### Milvus backend vs FAISS Flat, same vectors ({report['count']:,} SciFact passages, {report['encoder']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {_machine(report)}. Milvus: {report['milvus']['server']}, {report['milvus']['index_type']} / "
        f"{report['milvus']['metric']}. Source: `{source}`.",
        "",
        "| backend | nDCG@10 | MRR@10 | R@100 | HTTP p50 ms | p95 ms | p99 ms | QPS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, quality, key in (("FAISS Flat", f, "faiss"), ("Milvus FLAT", m, "milvus")):
        h = http[key]
        lines.append(f"| {name} | {quality['nDCG@10']:.4f} | {quality['MRR@10']:.4f} | {quality['R@100']:.4f} | "
                     f"{h['p50_ms']} | {h['p95_ms']} | {h['p99_ms']} | {h['qps']} |")
    lines += [
        "",
        f"nDCG@10 difference {q['ndcg10_difference']:+.4f}; identical top-10 lists for {q['queries_with_identical_top10']} "
        f"of {q['queries']} queries (largest score difference {q['max_top10_score_difference']}). HTTP: "
        f"{http['clients']} closed-loop client(s), {http['duration_s']} s, {http['threads']} thread(s), top_k {http['top_k']}.",
        f"Hot swap between two Milvus versions (own collections; CURRENT and the alias switched, then /admin/reload) "
        f"under {swap['clients']} clients for {swap['duration_s']} s: {swap['requests']} requests, {swap['failed']} failed, "
        f"{swap['stale_answers']} stale answers, {swap['swaps_completed']}/{len(swap['swaps'])} swaps followed by /info.",
        "",
    ]
    return lines


INDEX_RENDERERS = {
    "index_engines": render_index_engines,
    "milvus_backend": render_milvus_backend,
    "index_encoding": render_index_encoding,
    "backend_parity": render_backend_parity,
    "index_families": render_index_families,
    "index_scale": render_index_scale,
    "index_scale_ann": render_index_scale_ann,
    "index_resume": render_index_resume,
}


SERVICE_RENDERERS = {
    "service_load": render_service_load,
    "service_swap": render_service_swap,
    "service_fuzz": render_service_fuzz,
    "peer_txtai": render_peer_txtai,
    "service_soak": render_service_soak,
}


def render_hybrid_http(report: dict, source: str) -> list[str]:
    dataset = Path(report["dataset"]).name
    fusion = report["fusion"]
    lines = [
        f"### Search modes over HTTP: {dataset} / {report['split']} ({report['queries']} queries, top {report['top_k']})",
        "",
        f"Command: `{report['command']}`  ",
        f"{_machine(report)} Index version `{report['index_version']}`, encoder `{report['model']}`, "
        f"fusion {fusion['method']} dense_weight={fusion['dense_weight']} bm25_weight={fusion['bm25_weight']} "
        f"depths {fusion['dense_depth']}/{fusion['bm25_depth']}. Source: `{source}`.",
        "",
    ]
    rows = [[mode, *(f"{result['metrics'][m]:.4f}" for m in ("nDCG@10", "MRR@10", "R@50", "R@100")),
             *(f"{result['latency_ms'][k]:.1f}" for k in ("client_p50", "client_p95", "server_p50"))]
            for mode, result in report["modes"].items()]
    lines += [*markdown_table(["mode", "nDCG@10", "MRR@10", "R@50", "R@100", "client p50 ms", "client p95 ms", "server p50 ms"],
                              rows), ""]
    return lines


def render_fusion_fit(report: dict, source: str) -> list[str]:
    chosen = report["chosen"]
    grid = ", ".join(f"{g['dense_weight']:g}: {g[report['objective']]:.4f}" for g in report["grid"])
    return [
        f"### Fusion weights fitted on {Path(report['dataset']).name} / {report['split']}",
        "",
        f"Command: `{report['command']}`. Source: `{source}`.",
        "",
        f"Chosen: dense_weight={chosen['dense_weight']}, bm25_weight={chosen['bm25_weight']} "
        f"({report['objective']} {report['chosen_objective']:.4f} on the fitting split); "
        f"published as version `{report.get('published', '(not published)')}`.",
        f"Grid (dense_weight: {report['objective']}): {grid}.",
        "",
    ]


HYBRID_RENDERERS = {"hybrid_http": render_hybrid_http, "fusion_fit": render_fusion_fit}


def render_experiment(report: dict, source: str) -> list[str]:
    """A ``benchmarks/results/experiment-*.json`` (``pipeline.report.collect`` plus ``"plots"``)."""
    return render_markdown(report, report.get("plots") or {}, source)


def _source(path: Path) -> str:
    """A report's file as cited in RESULTS.md: relative to the project root when it is inside it."""
    resolved = path.resolve()
    return resolved.relative_to(HERE.parent).as_posix() if resolved.is_relative_to(HERE.parent) else str(resolved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=HERE / "results", help="the JSON reports (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md", help="the markdown written (default: %(default)s)")
    args = parser.parse_args(argv)
    lines = [
        "# Measured results",
        "",
        "Generated by `python benchmarks/render_results.py` from `benchmarks/results/*.json`; do not edit by hand.",
        "Rows marked *published* are reference figures from the literature, not measured here.",
        "",
        "## Retrieval quality",
        "",
    ]
    reports = [(_source(path), json.loads(path.read_text()))
               for path in sorted(args.results_dir.glob("*.json"))]
    for source, report in reports:
        if "systems" in report:
            lines += render_evaluation(report, source)
    sections = [
        ("Hybrid retrieval", HYBRID_RENDERERS),
        ("Service", SERVICE_RENDERERS),
        ("Teacher", TEACHER_RENDERERS),
        ("Distillation (MD2PR)", {"distill-seeds": render_distill_seeds,
                                  "filter-check": render_filter_check}),
        ("Experiments (md2pr-experiment)", {"experiment": render_experiment}),
        ("Index building", INDEX_RENDERERS),
    ]
    for title, renderers in sections:
        body = []
        for source, report in reports:
            if report.get("kind") in renderers and not report.get("smoke"):
                body += renderers[report["kind"]](report, source)
        if body:
            lines += [f"## {title}", "", *body]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
