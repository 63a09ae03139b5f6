"""RESULTS.md "Service" section: ``benchmarks/service_*.py`` and ``benchmarks/peer_txtai.py`` reports."""

from __future__ import annotations

from render_common import machine_text
from retrieval.tables import markdown_table


def driver_text(report: dict) -> str:
    """How the load was generated (reports before ``--driver`` existed used the httpx generator)."""
    if report.get("driver") == "wrk":
        return "wrk (C load generator, one connection per thread, each 200 answer timed) on the same machine"
    return "httpx client (Python, asyncio) on the same machine"


def render_service_load(report: dict, source: str) -> list[str]:
    """``benchmarks/service_load.py``: latency and QPS per concurrency, batching gain, overload and admission."""
    base = report["in_process"]
    lines = [
        f"### /search latency and throughput ({report['queries']['count']} real queries: {', '.join(report['queries']['sources'])})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.  ",
        f"Index `{report['index']}`, top_k {report['top_k']}, return_text {str(report['return_text']).lower()}, "
        f"server settings {report.get('server_env') or 'defaults'}; "
        f"closed loop over loopback ({driver_text(report)}). In-process `Retriever.search`, one query "
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
        lines += admission_lines(report["admission"])
    lines.append("")
    return lines


def admission_lines(a: dict) -> list[str]:
    """The admission table of a ``service_load`` report's ``admission`` part: per client count and
    retry behaviour, accepted throughput and latency, the 429 share and, for reports that have it,
    the split of the accepted server-side p99 (queue / model / rest) and the share of queue waits
    over the budget."""
    parts = any("parts" in _accepted(x) for x in a["levels"])
    return [
        "",
        f"Admission by expected wait (budget `MD2PR_MAX_QUEUE_WAIT_MS` = {a['max_queue_wait_ms']} ms, queue "
        f"{a['queue_max_queries']} queries):",
        "",
        *markdown_table(
            ["clients", "after a 429", "accepted QPS", "accepted p50 ms", "accepted p99 ms", "server side: accepted p50 / p99 ms",
             "server side: 429 p99 ms", "share answered 429", "other errors",
             *(["mean batch ms (queries)"] if any("mean_batch_ms" in x for x in a["levels"]) else []),
             *(["server side: accepted p99 queue / model / rest ms", "queue waits over budget"] if parts else [])],
            ([x["concurrency"], "waits Retry-After" if x.get("honour_retry_after") else "asks again at once", x["qps"], x["p50_ms"], x["p99_ms"], _server_side(x, "200"), _server_side(x, "429", both=False),
              x["share_429"], x["errors"] - x["statuses"].get("429", 0),
              *([f"{x['mean_batch_ms']} ({x['mean_batch_queries']})"] if "mean_batch_ms" in x else []),
              *([_parts(x), _over_budget(x)] if parts else [])]
             for x in a["levels"]),
        ),
        "",
        "Client side: as wrk saw it, from sending the request to its answer. Server side: the service's access "
        "log, from the moment the application got the request to its answer (the budget bounds this part; the "
        "rest is time in the kernel's accept queue and the event loop's backlog before the request is read).",
        *(["", "Split of the accepted server-side latency (each part's own p99, from each answer's `Server-Timing`): "
           "queue, the wait before its batch started (what the budget bounds); model, its batch's encode + search; "
           "rest, the application's own time (body, validation, response, event loop). Queue waits over budget: "
           "the share of accepted searches whose queue wait exceeded the budget."] if parts else []),
        *_target_lines(a),
    ]


def _target_lines(a: dict) -> list[str]:
    """Issue 18's target read off the table: accepted server-side p99 <= budget + one batch, with
    "one batch" taken two ways (the mean batch of that load, and the p99 of the model time its
    accepted searches saw); empty for reports without both figures."""
    budget = a.get("max_queue_wait_ms")
    rows = [x for x in a["levels"] if _accepted(x).get("p99_ms") is not None and x.get("mean_batch_ms") is not None
            and _accepted(x).get("parts")]
    if budget is None or not rows:
        return []

    def verdict(x: dict, batch_ms: float) -> str:
        p99 = _accepted(x)["p99_ms"]
        return f"{x['concurrency']}{' (Retry-After)' if x.get('honour_retry_after') else ''}: {p99} {'<=' if p99 <= budget + batch_ms else '>'} {round(budget + batch_ms, 1)}"

    mean = [verdict(x, x["mean_batch_ms"]) for x in rows]
    tail = [verdict(x, _accepted(x)["parts"]["model"]["p99_ms"]) for x in rows]
    met_mean = sum("<=" in v for v in mean)
    met_tail = sum("<=" in v for v in tail)
    return [
        "",
        f"Target, accepted server-side p99 <= budget + one batch: with one batch = that load's mean batch time, met in "
        f"**{met_mean} of {len(rows)}** rows ({'; '.join(mean)} ms); with one batch = the p99 of the model time its accepted "
        f"searches saw, met in **{met_tail} of {len(rows)}** ({'; '.join(tail)} ms).",
    ]


def _accepted(level: dict) -> dict:
    """The server-side figures of an admission level's accepted (200) searches; empty when not recorded."""
    return level.get("server_side", {}).get("200") or {}


def _parts(level: dict) -> str:
    """``queue / model / rest`` p99 of an admission level's accepted searches; "–" when not recorded."""
    parts = _accepted(level).get("parts")
    if not parts:
        return "–"
    return " / ".join(str(parts[name]["p99_ms"]) for name in ("queue", "model", "other"))


def _over_budget(level: dict) -> str:
    share = _accepted(level).get("queue_over_budget_share")
    return "–" if share is None else f"{share:.2%}"


def _server_side(level: dict, status: str, both: bool = True) -> str:
    """``p50 / p99`` (or ``p99``) of one status's server-side latency at an admission level; "–" when not recorded."""
    row = level.get("server_side", {}).get(status)
    if not row:
        return "–"
    return f"{row['p50_ms']} / {row['p99_ms']}" if both else str(row["p99_ms"])


def render_service_soak(report: dict, source: str) -> list[str]:
    """``benchmarks/service_soak.py``: memory slope and failures over a long run of mixed traffic with hot swaps."""
    rss = report["rss_mb"]
    return [
        f"### Soak: {report['duration_s']:.0f} s of mixed traffic ({', '.join(report['mix'])}) from {report['clients']} clients, a hot swap every {report['reload_every_s']:.0f} s",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}; load average at end {', '.join(str(x) for x in report['load_average_at_end'])}. Source: `{source}`.",
        "",
        f"- Resident memory (the server's `process_resident_memory_bytes`, every {report['sample_every_s']:.0f} s): "
        f"{rss['first']} MB at start, {rss['after_warmup']} MB after warm-up, {rss['last']} MB at the end (max {rss['max']} MB); "
        f"**slope after warm-up {report['slope_mb_per_min_after_warmup']} MB/min**, over the last half "
        f"{report['slope_mb_per_min_last_half']} MB/min.",
        f"- Requests: {report['requests']}, **failed: {report['failed']}**"
        + (f", refused by the wait budget (429): {report['refused']}, of which "
           f"{report['non_ok_within_reload_window']} non-200s fell within {report['reload_window_s']:.0f} s after a reload began"
           if "refused" in report else "")
        + f"; reloads {report['reloads']}; p50 ms by kind {report['p50_ms']}, p99 ms {report.get('p99_ms')}.",
        "",
    ]


def render_peer_txtai(report: dict, source: str) -> list[str]:
    """``benchmarks/peer_txtai.py``: this service and txtai's API side by side, per concurrency level."""
    ip = report["in_process"]
    settings = ", ".join(f"{k}={v}" for k, v in report["our_settings"].items()) or "defaults"
    lines = [
        f"### This service vs txtai {report['txtai_version']}'s API, side by side ({report['queries']['count']} {report['queries']['source']}, top {report['top_k']}, no text)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}; load average at end {', '.join(str(x) for x in report['load_average_at_end'])}. Source: `{source}`.  ",
        f"Both servers: same model, exact inner-product index of the same passages, thread environment "
        f"{report['thread_env']}; our settings: {settings}. Load: closed loop over loopback, {driver_text(report)}. Each cell is the median of {report['repeats']} alternated "
        f"runs of {report['duration_s']:.0f} s. Top-10 overlap of the two servers' answers: {report['top10_overlap']['mean']} "
        f"({report['top10_overlap']['queries']} queries). In-process limit (encoder forward + FAISS search, no HTTP): "
        f"p50 {ip['p50_ms']} ms, {ip['qps_one_at_a_time']} QPS one at a time.",
        "",
    ]
    # the medians of two runs carry float noise (116.36500000000001): QPS to 1 decimal, milliseconds to 2
    rows = [[r["concurrency"], f"{o['qps']:.1f}", f"{o['p50_ms']:.2f}", f"{o['p99_ms']:.2f}",
             f"{t['qps']:.1f}", f"{t['p50_ms']:.2f}", f"{t['p99_ms']:.2f}",
             f"**{r['qps_ratio']}x**", f"**{r['p50_speedup']}x**",
             f"{o['refused']} / {t['refused']}", f"{o['errors']} / {t['errors']}"]
            for r in report["levels"] for o, t in [(r["ours"], r["txtai"])]]
    lines += [*markdown_table(["clients", "ours QPS", "ours p50 ms", "ours p99 ms", "txtai QPS", "txtai p50 ms", "txtai p99 ms",
                               "QPS ours/txtai", "p50 txtai/ours", "429 ours / txtai", "errors ours / txtai"], rows), ""]
    lines += ["429: refused with Retry-After by the wait budget (`MD2PR_MAX_QUEUE_WAIT_MS`); errors: any other answer than 200.", ""]
    return lines


def render_service_swap(report: dict, source: str) -> list[str]:
    """``benchmarks/service_swap.py``: failures, stale answers and swap times of index swaps under load."""
    times = [s["took_ms"] for s in report["swaps"]]
    what = "Query-encoder swaps over one index" if report.get("swap_to") else "Index swaps"
    lines = [
        f"### {what} under load ({report['clients']} clients, {report['duration_s']:.0f} s, {report['swaps_requested']} swaps via {report['via']})",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.",
        "",
    ]
    if report.get("swap_to"):
        encoders = ", ".join(f"`{version}` queries by {fp}" for version, fp in report["query_encoders"].items())
        lines += [f"Alternating `{report['index']}` and `{report['swap_to']}` (the same passage vectors): {encoders}; "
                  "a swap counts as followed when `/info` names the new version and its query encoder.", ""]
    return lines + [
        f"- Requests: {report['requests']}, **failed: {report['failed']}** ({report['statuses']}"
        + (f"; refused with 429 by the wait budget, the client then honouring Retry-After: {report['refused_429']}, "
           f"of them while a swap was loading: {report['refused_429_during_swaps']}" if "refused_429" in report else "")
        + f"); {report['qps']} QPS, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms.",
        f"- Swaps with `/info` naming the new version afterwards: **{report['swaps_completed']}/{report['swaps_requested']}**; "
        f"answers from the old version after a swap completed: {report['stale_answers']}; swap time (ms): {times}.",
        f"- Answers by version: {report['answers_by_version']}.",
        "",
    ]


def render_service_fuzz(report: dict, source: str) -> list[str]:
    """``benchmarks/service_fuzz.py``: what Schemathesis sent to the OpenAPI document and what came back."""
    lines = [
        "### Schemathesis fuzzing of the OpenAPI document",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {machine_text(report)}. Source: `{source}`.",
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

SERVICE_RENDERERS = {
    "service_load": render_service_load,
    "service_swap": render_service_swap,
    "service_fuzz": render_service_fuzz,
    "peer_txtai": render_peer_txtai,
    "service_soak": render_service_soak,
}
