"""Closed-loop load on the /search service over loopback, with real query text.

Measures, against one index (default: the SciFact index of ``make run``):

1. ``Retriever.search`` in-process, one query at a time (the cost of the model and FAISS alone);
   and the encoder alone in-process (in the main thread and on a one-thread executor, as the
   service runs it) next to the server's own ``Server-Timing`` encode time at one client: the
   in-server inflation, side by side;
2. the service at each concurrency level (default 1, 4, 16, 64): QPS, p50/p95/p99 latency,
   errors, mean batch size; and the ratio of its p50 at concurrency 1 to the in-process p50
   (goal <= 1.5x);
3. QPS at one concurrency (default 16) with micro-batching on and off (``MD2PR_BATCH_MAX_QUERIES=1``),
   the two servers running side by side and measured alternately, several times;
4. overload: far more clients than a small queue holds, to show 429s (with Retry-After), not timeouts;
5. admission by expected wait (``MD2PR_MAX_QUEUE_WAIT_MS``, the default queue) at 64, 200 and 500
   clients: the accepted requests' p50/p99 next to the budget, and the share answered 429 — as
   the clients saw them and as the server measured them (its access log: from the moment the
   request reached the application to its answer; the difference is time spent before the
   server read the request, in the kernel's accept queue and the event loop's backlog).

Each level is a closed loop: every client sends its next query as soon as the previous answer
arrives, after an unmeasured warm-up. The client shares the CPU with the server: with
``--driver wrk`` (the default; ``wrk_load.py``, a C load generator) it takes little of it; with
``--driver python`` (httpx on asyncio, in this process) it takes about as much per request as the
server, and on a 2-core machine that is part of what is measured.

Run (quiet machine):  python benchmarks/service_load.py
Smoke test:           python benchmarks/service_load.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from wrk_load import WrkError, post_json, wrk_binary, wrk_closed_loop
from service_common import (
    add_index_arguments,
    add_report_arguments,
    add_server_env_argument,
    closed_loop,
    command_line,
    load_queries,
    machine_facts,
    percentile,
    round_ms,
    report_path,
    server,
    server_env,
    use_service_environment,
    write_report,
)


def _scrape(url: str) -> dict[str, float]:
    """Sums of the batch histograms (to derive the mean batch size and time of a window; search
    time summed over its modes)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for name in ("md2pr_batch_queries_sum", "md2pr_batch_queries_count", "md2pr_encode_seconds_sum",
                 "md2pr_search_seconds_sum"):
        out[name] = sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.M))
    return out


def run_level(
    url: str,
    queries: list[str],
    concurrency: int,
    args: argparse.Namespace,
    duration_s: float | None = None,
    timeout_s: float = 60.0,
    honour_retry_after: bool = False,
) -> dict:
    body = {"top_k": args.top_k, "return_text": not args.no_text}
    duration_s = duration_s or args.duration
    before = _scrape(url)
    if args.driver == "wrk":
        requests = [post_json("/search", {"query": query, **body}) for query in queries]
        try:
            result = wrk_closed_loop(url, requests, concurrency, args.warmup, duration_s, timeout_s, honour_retry_after)
        except WrkError as exc:
            raise SystemExit(f"error: {exc}") from None
    else:
        if honour_retry_after:
            raise ValueError("clients that honour Retry-After need --driver wrk")

        def request(client: httpx.AsyncClient, query: str):
            return client.post("/search", json={"query": query, **body})

        result = asyncio.run(closed_loop(url, queries, concurrency, args.warmup, duration_s, request, timeout_s))
    after = _scrape(url)
    batches = after["md2pr_batch_queries_count"] - before["md2pr_batch_queries_count"]
    result["mean_batch_queries"] = (
        round((after["md2pr_batch_queries_sum"] - before["md2pr_batch_queries_sum"]) / batches, 2) if batches else None
    )
    # the model's time per batch (encode + search), the "one batch" the admission budget allows beyond itself
    model_s = sum(after[k] - before[k] for k in ("md2pr_encode_seconds_sum", "md2pr_search_seconds_sum"))
    result["mean_batch_ms"] = round(model_s / batches * 1000, 2) if batches else None
    return result


def server_side_latencies(
    log_path: Path, since: datetime, route: str = "/search", budget_ms: float | None = None
) -> dict:
    """The server's own latency of ``route`` requests logged at or after ``since`` (its JSON access
    lines; other lines skipped): per status, the count and p50/p99 in ms. Answered searches also
    get where that time went, from the lines' ``timing_ms``: p50/p99 of the queue wait, of the
    model (encode + search), and of the rest (the application's own time: body, validation,
    response, event loop), and, given ``budget_ms``, the share whose queue wait exceeded it."""
    by_status: dict[str, list[float]] = {}
    parts: dict[str, list[float]] = {"queue": [], "model": [], "other": []}
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
            if entry.get("route") != route or datetime.fromisoformat(entry["ts"]) < since:
                continue
            latency = float(entry["latency_ms"])
            by_status.setdefault(str(entry["status"]), []).append(latency)
            timing = entry.get("timing_ms")
            if entry["status"] == 200 and timing:
                model = float(timing.get("encode", 0.0)) + float(timing.get("search", 0.0))
                queue = float(timing.get("queue", 0.0))
                parts["queue"].append(queue)
                parts["model"].append(model)
                parts["other"].append(max(latency - queue - model, 0.0))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    report: dict = {
        status: {"count": len(v), "p50_ms": round_ms(percentile(v, 50)), "p99_ms": round_ms(percentile(v, 99))}
        for status, v in sorted(by_status.items())
    }
    if parts["queue"] and "200" in report:
        report["200"]["parts"] = {
            name: {"p50_ms": round_ms(percentile(v, 50)), "p99_ms": round_ms(percentile(v, 99))}
            for name, v in parts.items()
        }
        if budget_ms is not None:
            over = sum(q > budget_ms for q in parts["queue"])
            report["200"]["queue_over_budget_share"] = round(over / len(parts["queue"]), 4)
    return report


def _backend(args: argparse.Namespace) -> str:
    """The servers' encoder backend (``--server-env MD2PR_BACKEND=...``), for the in-process rows too."""
    return server_env(args).get("MD2PR_BACKEND", "torch")


def in_process(index: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """``Retriever.search`` one query at a time, same threads, top_k and text as the service."""
    from retrieval.retriever import Retriever
    from retrieval.runtime import configure_threads

    threads = configure_threads(args.threads)
    retriever = Retriever.open(index, backend=_backend(args), threads=threads)
    try:
        for query in queries[:10]:  # warm-up
            retriever.search([query], args.top_k, not args.no_text)
        latencies = []
        for query in queries[: args.inprocess_queries]:
            started = time.perf_counter()
            retriever.search([query], args.top_k, not args.no_text)
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        retriever.close()
    return {
        "queries": len(latencies),
        "threads": threads,
        "p50_ms": round_ms(percentile(latencies, 50)),
        "p95_ms": round_ms(percentile(latencies, 95)),
        "mean_ms": round_ms(statistics.fmean(latencies)),
    }


def encode_in_process(index: Path, queries: list[str], args: argparse.Namespace) -> dict:
    """``encode_queries`` of one query at a time, in this thread and on a one-thread executor
    (the way the service's compute thread gets its work): the in-process side of the inflation check."""
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.retriever import Retriever
    from retrieval.runtime import configure_threads

    threads = configure_threads(args.threads)
    retriever = Retriever.open(index, backend=_backend(args), threads=threads)
    encoder = retriever.encoder
    texts = queries[: args.inprocess_queries]

    def timed(query: str) -> float:
        started = time.perf_counter()
        encoder.encode_queries([query], batch_size=1)
        return (time.perf_counter() - started) * 1000

    try:
        for query in texts[:10]:
            timed(query)
        here = [timed(q) for q in texts]
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(lambda: [timed(q) for q in texts[:10]]).result()
            compute_thread = [pool.submit(timed, q).result() for q in texts]
    finally:
        retriever.close()
    return {
        "queries": len(texts),
        "main_thread_p50_ms": round_ms(percentile(here, 50)),
        "compute_thread_p50_ms": round_ms(percentile(compute_thread, 50)),
    }


def server_timing(url: str, queries: list[str], n: int, top_k: int, mode: str = "dense") -> dict:
    """One client, one request after another: the p50 of each ``Server-Timing`` part and of the
    whole round trip as the client sees it (ms)."""
    parts: dict[str, list[float]] = {"queue": [], "encode": [], "search": [], "client": []}
    body = {"top_k": top_k, "return_text": False, "mode": mode}
    with httpx.Client(base_url=url, timeout=30) as client:
        for query in queries[:10]:
            client.post("/search", json={"query": query, **body})
        for query in queries[:n]:
            started = time.perf_counter()
            response = client.post("/search", json={"query": query, **body})
            parts["client"].append((time.perf_counter() - started) * 1000)
            for name, value in re.findall(r"(\w+);dur=([\d.]+)", response.headers.get("server-timing", "")):
                if name in parts:
                    parts[name].append(float(value))
    return {f"{name}_p50_ms": round_ms(percentile(values, 50)) for name, values in parts.items()}


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_arguments(parser)
    parser.add_argument("--levels", default="1,4,16,64", help="concurrency levels")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each level")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--driver", choices=("wrk", "python"), default="wrk", help="load generator (default: %(default)s; see the doc)"
    )
    parser.add_argument("--no-text", action="store_true", help="return_text=false (default: passages with text)")
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: all cores)")
    parser.add_argument(
        "--batch-wait-ms", type=float, default=None, help="MD2PR_BATCH_WAIT_MS of the servers (default: the service's)"
    )
    parser.add_argument("--inprocess-queries", type=int, default=300)
    add_server_env_argument(parser)  # every server's; the in-process rows use the same MD2PR_BACKEND
    parser.add_argument("--compare-concurrency", type=int, default=16, help="level of the batching on/off comparison")
    parser.add_argument("--repeats", type=int, default=3, help="alternated on/off runs of the comparison")
    parser.add_argument("--overload-concurrency", type=int, default=128)
    parser.add_argument("--overload-queue", type=int, default=32, help="MD2PR_QUEUE_MAX_QUERIES of the overload server")
    parser.add_argument("--overload-duration", type=float, default=15.0)
    parser.add_argument("--admission-levels", default="64,200,500", help="client counts of the admission check")
    parser.add_argument(
        "--max-queue-wait-ms", type=float, default=None, help="MD2PR_MAX_QUEUE_WAIT_MS there (default: the service's)"
    )
    add_report_arguments(parser, smoke_help="a few seconds per step, to check the script works")
    args = parser.parse_args(argv)
    if args.smoke:
        args.levels, args.duration, args.warmup, args.repeats = "1,4", 2.0, 0.5, 1
        args.inprocess_queries, args.overload_concurrency, args.overload_duration = 20, 32, 2.0
        args.admission_levels = "64"
    output = report_path(args, "service-load")
    if args.driver == "wrk":
        try:
            wrk_binary()
        except WrkError as exc:
            raise SystemExit(f"error: {exc}") from None
    levels = [int(x) for x in args.levels.split(",")]
    queries = load_queries(args.data, args.queries.split(","))
    threads = args.threads or os.cpu_count() or 1
    report = {
        "kind": "service_load",
        "command": command_line(),
        "machine": machine_facts(args.threads),
        "index": str(args.index),
        "queries": {"sources": args.queries.split(","), "count": len(queries)},
        "top_k": args.top_k,
        "return_text": not args.no_text,
        "smoke": args.smoke,
        "driver": args.driver,
        "server_env": server_env(args),
    }
    print(f"{len(queries)} queries; in-process baseline ...", flush=True)
    report["in_process"] = in_process(args.index, queries, args)
    report["encode_in_process"] = encode_in_process(args.index, queries, args)
    base_env = {
        "MD2PR_INDEX": str(args.index),
        "MD2PR_TORCH_THREADS": str(threads),
        "MD2PR_ACCESS_LOG": "true",
        **server_env(args),
    }
    if args.batch_wait_ms is not None:
        base_env["MD2PR_BATCH_WAIT_MS"] = str(args.batch_wait_ms)
    logs = Path(tempfile.mkdtemp(prefix="md2pr-load-"))
    with (
        server({**base_env}, logs / "batching-on.log") as on_url,
        server({**base_env, "MD2PR_BATCH_MAX_QUERIES": "1"}, logs / "batching-off.log") as off_url,
    ):
        report["server_settings"] = httpx.get(on_url + "/info").json()["serving"]
        timing = server_timing(on_url, queries, args.inprocess_queries, args.top_k)
        inside = report["encode_in_process"]["main_thread_p50_ms"]
        timing["encode_inflation"] = round(timing["encode_p50_ms"] / inside, 3) if inside and timing["encode_p50_ms"] else None
        report["encode_in_server"] = timing
        modes = httpx.get(on_url + "/info").json()["index"].get("modes", ["dense"])
        if "hybrid" in modes:
            # Interleaved so that drift in machine load hits both modes alike.
            dense, hybrid = [], []
            for start in range(0, args.inprocess_queries, 50):
                chunk = queries[start : start + 50]
                dense.append(server_timing(on_url, chunk, len(chunk), args.top_k, "dense")["client_p50_ms"])
                hybrid.append(server_timing(on_url, chunk, len(chunk), args.top_k, "hybrid")["client_p50_ms"])
            report["hybrid_cost"] = {
                "dense_client_p50_ms": round_ms(statistics.median(dense)),
                "hybrid_client_p50_ms": round_ms(statistics.median(hybrid)),
                "extra_ms": round_ms(statistics.median(hybrid) - statistics.median(dense)),
            }
        report["levels"] = []
        for level in levels:
            print(f"concurrency {level} ...", flush=True)
            report["levels"].append(run_level(on_url, queries, level, args))
        c1 = next((x for x in report["levels"] if x["concurrency"] == 1), None)
        if c1 and c1["p50_ms"]:
            report["ratio_c1_p50_to_in_process_p50"] = round(c1["p50_ms"] / report["in_process"]["p50_ms"], 3)
            report["ratio_c1_mean_to_in_process_mean"] = round(c1["mean_ms"] / report["in_process"]["mean_ms"], 3)
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for repeat in range(args.repeats):
            for name, url in (
                (("on", on_url), ("off", off_url)) if repeat % 2 == 0 else (("off", off_url), ("on", on_url))
            ):
                print(f"batching {name}, concurrency {args.compare_concurrency} (run {repeat + 1}) ...", flush=True)
                runs[name].append(run_level(url, queries, args.compare_concurrency, args))
        on_qps = statistics.median(r["qps"] for r in runs["on"])
        off_qps = statistics.median(r["qps"] for r in runs["off"])
        report["batching"] = {
            "concurrency": args.compare_concurrency,
            "runs": runs,
            "median_qps_on": on_qps,
            "median_qps_off": off_qps,
            "gain": round(on_qps / off_qps, 3) if off_qps else None,
        }
    overload_env = {**base_env, "MD2PR_QUEUE_MAX_QUERIES": str(args.overload_queue)}
    with server(overload_env, logs / "overload.log") as url:
        print(f"overload: {args.overload_concurrency} clients, queue {args.overload_queue} ...", flush=True)
        overload = run_level(url, queries, args.overload_concurrency, args, args.overload_duration, timeout_s=30.0)
        overload["queue_max_queries"] = args.overload_queue
        overload["request_timeout_s"] = httpx.get(url + "/info").json()["serving"]["request_timeout_s"]
        report["overload"] = overload
    admission_env = dict(base_env)
    if args.max_queue_wait_ms is not None:
        admission_env["MD2PR_MAX_QUEUE_WAIT_MS"] = str(args.max_queue_wait_ms)
    with server(admission_env, logs / "admission.log") as url:
        serving = httpx.get(url + "/info").json()["serving"]
        rows = []
        # Clients that ask again at once after a 429 (a retry storm), then, with wrk, clients that
        # wait the Retry-After they were given, as a well-behaved client library does.
        for honour in (False, True) if args.driver == "wrk" else (False,):
            for clients in [int(x) for x in args.admission_levels.split(",")]:
                print(f"admission by expected wait: {clients} clients{' honouring Retry-After' if honour else ''} ...", flush=True)
                since = datetime.now(timezone.utc) + timedelta(seconds=args.warmup)  # the warm-up left out
                row = run_level(url, queries, clients, args, args.overload_duration, timeout_s=30.0, honour_retry_after=honour)
                time.sleep(0.5)  # the last access lines reach the log
                row["server_side"] = server_side_latencies(
                    logs / "admission.log", since, budget_ms=serving.get("max_queue_wait_ms")
                )
                row["share_429"] = round(row["statuses"].get("429", 0) / row["requests"], 4) if row["requests"] else None
                row["honour_retry_after"] = honour
                rows.append(row)
        report["admission"] = {
            "max_queue_wait_ms": serving.get("max_queue_wait_ms"),
            "queue_max_queries": serving.get("queue_max_queries"),
            "levels": rows,
        }
    report["server_logs"] = str(logs)
    write_report(report, output)
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    print(
        f"\nin-process Retriever.search: p50 {report['in_process']['p50_ms']} ms, mean {report['in_process']['mean_ms']} ms"
    )
    print("| concurrency | QPS | p50 ms | p95 ms | p99 ms | errors | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for x in report["levels"]:
        print(
            f"| {x['concurrency']} | {x['qps']} | {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | {x['errors']} | {x['mean_batch_queries']} |"
        )
    e, t = report["encode_in_process"], report["encode_in_server"]
    print(
        f"encode p50: in-process {e['main_thread_p50_ms']} ms (compute thread {e['compute_thread_p50_ms']} ms), "
        f"in the server {t['encode_p50_ms']} ms ({t['encode_inflation']}x); server queue {t['queue_p50_ms']} ms, "
        f"search {t['search_p50_ms']} ms"
    )
    if "hybrid_cost" in report:
        h = report["hybrid_cost"]
        print(f"one client: dense p50 {h['dense_client_p50_ms']} ms, hybrid {h['hybrid_client_p50_ms']} ms (+{h['extra_ms']} ms)")
    if "ratio_c1_p50_to_in_process_p50" in report:
        print(f"p50 at concurrency 1 / in-process p50: {report['ratio_c1_p50_to_in_process_p50']}x (goal <= 1.5x)")
    b = report["batching"]
    print(
        f"QPS at concurrency {b['concurrency']}: batching on {b['median_qps_on']}, off {b['median_qps_off']}, gain {b['gain']}x"
    )
    o = report["overload"]
    print(f"overload ({o['concurrency']} clients, queue {o['queue_max_queries']}): statuses {o['statuses']}")
    a = report["admission"]
    print(f"admission by expected wait (budget {a['max_queue_wait_ms']} ms):")
    for x in a["levels"]:
        ok = x.get("server_side", {}).get("200", {})
        print(
            f"  {x['concurrency']} clients{' (honouring Retry-After)' if x.get('honour_retry_after') else ''}: accepted p50 {x['p50_ms']} ms, p99 {x['p99_ms']} ms "
            f"(server side p50 {ok.get('p50_ms')} ms, p99 {ok.get('p99_ms')} ms), 429 share {x['share_429']}"
        )
        if ok.get("parts"):
            parts = ", ".join(f"{name} {v['p50_ms']} / {v['p99_ms']}" for name, v in ok["parts"].items())
            print(f"    accepted p50 / p99 ms by part: {parts}; queue over budget {ok.get('queue_over_budget_share')}")


if __name__ == "__main__":
    raise SystemExit(main())
