"""Soak: a bounded run of mixed traffic and hot swaps against one server, sampling its memory.

For ``--duration`` seconds (default 600) ``--clients`` closed-loop clients over loopback send a
mix of requests with real query text — dense, BM25 and hybrid single queries and batches of 8
(``queries``) — while every ``--reload-every`` seconds ``CURRENT`` is switched between two
versions (hard-linked copies of the index's current version, in a scratch root) and the
server is told to reload, so each reload loads a real version and retires the old one. The
server's resident memory (``process_resident_memory_bytes`` from its own ``/metrics``) is sampled
every ``--sample-every`` seconds.

Reported: the RSS series, its least-squares slope (MB per minute) over the samples after the
warm-up (the first ``--warmup-fraction`` of the run) and over the last half, the request
statuses, and the reloads with the second each began. A 429 (refused by the admission budget,
``MD2PR_MAX_QUEUE_WAIT_MS``) is counted as ``refused`` and every other non-200 as ``failed``; the
second of each non-200 is kept, so a report shows whether refusals cluster after reloads (a
version loading beside the serving one takes CPU from it). A plateau reads as a slope near 0
after warm-up.

Run (quiet machine):  python benchmarks/service_soak.py --index artifacts/indexes/scifact
Smoke test:           python benchmarks/service_soak.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from service_common import (
    add_index_arguments,
    add_report_arguments,
    add_server_env_argument,
    command_line,
    load_queries,
    machine_facts,
    percentile,
    report_path,
    round_ms,
    server,
    server_env,
    use_service_environment,
    write_report,
)

ADMIN_KEY = "soak-benchmark-key"
KINDS = ("dense", "bm25", "hybrid", "batch")


def scratch_root(index: Path, work: Path) -> tuple[Path, list[str]]:
    """An index root with two versions that share every file with ``index``'s current version (hard links)."""
    from retrieval.index_versions import resolve_index_dir, set_current

    source = resolve_index_dir(index)
    root = work / "index-root"
    names = [f"{source.name}-a", f"{source.name}-b"]
    for name in names:
        shutil.copytree(source, root / "versions" / name, copy_function=os.link)
    set_current(root, names[0])
    return root, names


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, bytes) samples, in MB per minute (None for fewer than 3)."""
    if len(samples) < 3:
        return None
    xs, ys = [t for t, _ in samples], [b / 1e6 for _, b in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 3) if var else None


def rss_bytes(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    match = re.search(r"^process_resident_memory_bytes (\S+)$", text, flags=re.M)
    if not match:
        raise SystemExit("error: the server's /metrics has no process_resident_memory_bytes")
    return float(match.group(1))


async def mixed_load(
    url: str, queries: list[str], clients: int, start: float, end: float, non_ok_at: list[list]
) -> tuple[Counter, dict[str, list[float]]]:
    """Closed-loop clients cycling through :data:`KINDS` until loop time ``end``; each non-200
    answer is appended to ``non_ok_at`` as ``[seconds since start, kind, status]``."""
    statuses: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while loop.time() < end:
                i = next(counter)
                kind = KINDS[i % len(KINDS)]
                if kind == "batch":
                    body = {"queries": [queries[(i + j) % len(queries)] for j in range(8)], "top_k": 10}
                else:
                    body = {"query": queries[i % len(queries)], "top_k": 10, "mode": kind}
                started = loop.time()
                try:
                    status = str((await client.post("/search", json=body)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                statuses[f"{kind}:{status}"] += 1
                if status == "200":
                    latencies[kind].append((loop.time() - started) * 1000)
                else:
                    non_ok_at.append([round(started - start, 1), kind, status])

        await asyncio.gather(*(worker() for _ in range(clients)))
    return statuses, latencies


async def soak(url: str, root: Path, names: list[str], queries: list[str], args: argparse.Namespace) -> dict:
    from retrieval.index_versions import set_current

    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + args.duration
    non_ok_at: list[list] = []
    load = asyncio.create_task(mixed_load(url, queries, args.clients, start, end, non_ok_at))
    samples: list[tuple[float, float]] = []
    reloads: Counter[str] = Counter()
    reload_at: list[float] = []
    next_reload = start + args.reload_every
    flip = itertools.cycle(names[1:] + names[:1])
    with httpx.Client(base_url=url, timeout=120) as control:
        while loop.time() < end:
            samples.append((round(loop.time() - start, 1), await asyncio.to_thread(rss_bytes, control)))
            if loop.time() >= next_reload:
                set_current(root, next(flip))
                reload_at.append(round(loop.time() - start, 1))
                answer = await asyncio.to_thread(control.post, "/admin/reload", headers={"x-api-key": ADMIN_KEY})
                reloads[f"{answer.status_code}:{answer.json().get('status', answer.json().get('type'))}"] += 1
                next_reload += args.reload_every
            print(f"  t={samples[-1][0]:.0f}s rss={samples[-1][1] / 1e6:.1f} MB", flush=True)
            await asyncio.sleep(args.sample_every)
        statuses, latencies = await load
        samples.append((round(loop.time() - start, 1), rss_bytes(control)))
    after_warmup = [s for s in samples if s[0] >= args.warmup_fraction * args.duration]
    last_half = [s for s in samples if s[0] >= args.duration / 2]
    ok = sum(v for k, v in statuses.items() if k.endswith(":200"))
    refused = sum(v for k, v in statuses.items() if k.endswith(":429"))
    after_reload = [t for t, _, _ in non_ok_at if any(0 <= t - r <= args.reload_window for r in reload_at)]
    return {
        "rss_samples": [[t, round(b / 1e6, 2)] for t, b in samples],
        "rss_mb": {
            "first": round(samples[0][1] / 1e6, 2),
            "after_warmup": round(after_warmup[0][1] / 1e6, 2) if after_warmup else None,
            "last": round(samples[-1][1] / 1e6, 2),
            "max": round(max(b for _, b in samples) / 1e6, 2),
        },
        "slope_mb_per_min_after_warmup": slope_mb_per_min(after_warmup),
        "slope_mb_per_min_last_half": slope_mb_per_min(last_half),
        "requests": sum(statuses.values()),
        "ok": ok,
        "refused": refused,
        "failed": sum(statuses.values()) - ok - refused,
        "statuses": dict(statuses),
        "non_ok_at_s": non_ok_at[:500],
        "reload_at_s": reload_at,
        "reload_window_s": args.reload_window,
        "non_ok_within_reload_window": len(after_reload),
        "p50_ms": {k: round_ms(percentile(v, 50)) for k, v in latencies.items()},
        "p99_ms": {k: round_ms(percentile(v, 99)) for k, v in latencies.items()},
        "reloads": dict(reloads),
    }


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_arguments(parser, index_help="index root or version with a BM25 side (default: make run's)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=60.0, help="seconds between hot swaps")
    parser.add_argument("--reload-window", type=float, default=10.0,
                        help="seconds after a reload begins within which a non-200 counts as near that reload")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-fraction", type=float, default=0.2, help="share of the run left out of the slope")
    parser.add_argument("--threads", type=int, default=None, help="MD2PR_TORCH_THREADS (default: all cores)")
    add_server_env_argument(parser)
    add_report_arguments(parser, smoke_help="20 seconds, a reload every 5")
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.reload_every, args.sample_every, args.clients = 20.0, 5.0, 2.0, 4
    output = report_path(args, "service-soak")
    queries = load_queries(args.data, args.queries.split(","))
    work = Path(tempfile.mkdtemp(prefix="md2pr-soak-"))
    root, names = scratch_root(args.index, work)
    threads = args.threads or os.cpu_count() or 1
    env = {
        "MD2PR_INDEX": str(root),
        "MD2PR_TORCH_THREADS": str(threads),
        "MD2PR_ADMIN_API_KEY": ADMIN_KEY,
        "MD2PR_ACCESS_LOG": "false",
        **server_env(args),
    }
    report = {
        "kind": "service_soak",
        "command": command_line(argv),
        "machine": machine_facts(args.threads),
        "index": str(args.index),
        "settings": {k: v for k, v in env.items() if k != "MD2PR_ADMIN_API_KEY"},
        "duration_s": args.duration,
        "clients": args.clients,
        "mix": list(KINDS),
        "reload_every_s": args.reload_every,
        "sample_every_s": args.sample_every,
        "warmup_fraction": args.warmup_fraction,
        "smoke": args.smoke,
    }
    started = time.monotonic()
    try:
        with server(env, work / "server.log") as url:
            info = httpx.get(url + "/info").json()
            if "hybrid" not in info.get("index", {}).get("modes", ["hybrid"]):
                raise SystemExit(f"error: {args.index} has no BM25 side index: the soak mixes bm25 and hybrid requests")
            print(f"soak: {args.duration:.0f} s, {args.clients} clients, reload every {args.reload_every:.0f} s ...", flush=True)
            report.update(asyncio.run(soak(url, root, names, queries, args)))
    finally:
        shutil.rmtree(work / "index-root", ignore_errors=True)
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(report, output)
    print(
        f"RSS {report['rss_mb']}; slope after warm-up {report['slope_mb_per_min_after_warmup']} MB/min, "
        f"last half {report['slope_mb_per_min_last_half']} MB/min; {report['requests']} requests, "
        f"{report['refused']} refused (429), {report['failed']} failed; {report['non_ok_within_reload_window']} of the "
        f"non-200s within {args.reload_window:.0f} s of a reload; reloads {report['reloads']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
