"""RESULTS.md "Index building" section: the ``benchmarks/index_*.py``, ``backend_parity.py``, ``ann_1m.py``
and ``milvus_backend.py`` reports."""

from __future__ import annotations

import json
from pathlib import Path

from render_common import machine_text
from retrieval.tables import markdown_table


def render_index_encoding(report: dict, source: str) -> list[str]:
    """``benchmarks/index_encoding.py``: the build job's encoding throughput against ``SentenceTransformer.encode``."""
    c, med, runs = report["config"], report["median_passages_per_s"], report["runs_passages_per_s"]
    lines = [
        f"### Encoding throughput: build job vs SentenceTransformer.encode ({c['passages']} SciFact passages)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.  ",
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
    """``benchmarks/backend_parity.py``: each encoder backend's parity with torch and its query latency."""
    lines = [
        f"### Encoder backends: parity with torch and single-query latency ({report['model']})",
        "",
        f"Command: `{report['command']}`  ",
        # threads differ per latency row (the parity check ran at the largest count)
        f"Machine: {machine_text({**report, 'machine': {'threads': '1 / 2', **report['machine']}})}. Source: `{source}`.  ",
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
    """``benchmarks/index_families.py``: recall, latency, size and build time of each FAISS family."""
    c, q = report["corpus"], report["queries"]
    lines = [
        f"### Index families on {c['passages']:,} real passages ({c['source']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.  ",
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
    """``benchmarks/index_scale.py``: the build job per family at a large number of vectors."""
    v = report["vectors"]
    lines = [
        f"### Build job at {v['count']:,} vectors ({v['dimension']} dims, {v['kind']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}, {report['machine']['memory_gb']} GiB memory. Source: `{source}`.  ",
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


def _prefetch_text(report: dict) -> str:
    """The list prefetch thread counts the memory-mapped measurements found (``—`` when none was IVF)."""
    found = sorted({f["mmap"]["list_prefetch_threads"] for f in report["families"]
                    if (f.get("mmap") or {}).get("list_prefetch_threads") is not None})
    return " / ".join(str(n) for n in found) if found else "—"


def render_index_scale_ann(report: dict, source: str) -> list[str]:
    """``benchmarks/ann_1m.py``: families at 1M real-shaped vectors, read into memory and memory-mapped, and replicas."""
    v, q = report["vectors"], report["vectors"]["queries"]
    shape = v["shape_check"]
    lines = [
        f"### Approximate families at {v['count']:,} real-shaped vectors, memory-mapped serving and replicas",
        "",
        f"Command: `{report['command']}` (run stage by stage)  ",
        f"Machine: {machine_text(report)}, {report['machine']['memory_gb']} GiB memory. Source: `{source}`.  ",
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
        "p50 / p95 ms in two ways: the index read into RAM, and memory-mapped as `IndexArtifact.open(mmap=True)` opens it "
        "(IVF lists as FAISS `OnDiskInvertedLists`, with their list prefetch threads turned off: `prefetch_nthread` "
        f"{_prefetch_text(report)} as measured). The served parameter is the gate's: the smallest whose one-sided 95% lower "
        "bound of mean recall@10 on the train claims (mean - 1.645 standard errors) reaches 0.95.",
        "",
    ]
    rows = []
    for f in report["families"]:
        params = _params_text(f["params"])
        ram, mm = f.get("ram") or {}, f.get("mmap") or {}
        parts = _build_parts(f)
        lat = lambda m: f"{m['p50_ms']} / {m['p95_ms']}" if m else "—"  # noqa: E731
        rows.append([f"`{f['factory']}`", params, f"{ram.get('recall_at_10', float('nan')):.3f}", lat(ram), lat(mm),
                     f"{f['build_s']} ({parts})", f["index_gib"], f["bytes_per_vector"],
                     f"{f['peak_rss_gb_build']} / {ram.get('peak_rss_gb', '—')}"])
    lines += markdown_table(["factory", "served params", "recall@10", "p50 / p95 ms RAM", "p50 / p95 ms mmap",
                             "build s (train / add / gate)", "index GiB", "bytes/vector", "peak RSS GiB build / serve"],
                            rows, "llrrrlrrr")
    lines += ["", "Recall@10 on the test claims / p50 ms RAM / p50 ms mmap, by search parameter:", ""]
    for f in report["families"]:
        sweep = (f.get("ram") or {}).get("sweep") or []
        mapped = {json.dumps(s["params"], sort_keys=True): s for s in (f.get("mmap") or {}).get("sweep") or []}
        shown = ", ".join(
            f"{_params_text(s['params'])}: {s['recall_at_10']:.3f} / {s['p50_ms']} / "
            f"{mapped.get(json.dumps(s['params'], sort_keys=True), {}).get('p50_ms', '—')}" for s in sweep)
        lines.append(f"- `{f['factory']}`: {shown}")
    gated = [f for f in report["families"] if (f.get("gate") or {}).get("sweep")]
    if gated:
        lines += ["", f"The build's quality gate on {q['gate']}: mean recall@10 / its 95% lower bound by search parameter:", ""]
        for f in gated:
            steps = []
            for step in f["gate"]["sweep"]:
                params = {k: v for k, v in step.items() if not k.startswith("recall")}
                bound = f" / {step['recall_lower_95']:.4f}" if step.get("recall_lower_95") is not None else ""
                steps.append(f"{_params_text(params)}: {step['recall']:.4f}{bound}")
            lines.append(f"- `{f['factory']}`: {', '.join(steps)}")
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
    """``benchmarks/index_resume.py``: a build killed midway, then resumed, against an uninterrupted one."""
    r, w = report["resumed_run"], report["uninterrupted_run"]
    same = ", ".join(f"{k} {'identical' if v else '**differs**'}" for k, v in report["identical"].items())
    return [
        f"### kill -9 in the middle of a build, then the same command ({report['passages']:,} SciFact passages)",
        "",
        f"Command: `{report.get('script', report['command'])}`, which runs `{report['command']}` three times  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.",
        "",
        f"- Killed with {report['killed_with']} after {report['killed_after_s']} s, with "
        f"{report['passages_in_finished_shards_at_kill']} passages in finished shards.",
        f"- The same command again: {r['reused']} passages reused, {r['encoded']} encoded, {r['seconds']} s; "
        f"an uninterrupted build: {w['encoded']} encoded, {w['seconds']} s.",
        f"- Published versions compared: {same}.",
        "",
    ]


def render_index_engines(report: dict, source: str) -> list[str]:
    """``benchmarks/index_engines.py``: the local encoding engine against Ray Data on the same passages."""
    local, ray = report["runs"]["local"], report["runs"]["ray"]
    return [
        f"### Encoding engines: local vs Ray Data ({report['corpus']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.",
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
    """``benchmarks/milvus_backend.py``: the Milvus backend against FAISS Flat on the same vectors."""
    q, http, swap = report["quality"], report["http"], report["swap"]
    f, m = q["faiss_flat"], q["milvus_flat"]
    lines = [
        f"### Milvus backend vs FAISS Flat, same vectors ({report['count']:,} SciFact passages, {report['encoder']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Milvus: {report['milvus']['server']}, {report['milvus']['index_type']} / "
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
