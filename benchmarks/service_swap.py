"""Index swaps under load: clients search without pause while the served index version changes.

Two copies of one real index version (default: the SciFact index of ``make run``) go into a
fresh index root under a temporary directory; the service serves that root. With ``--swap-to
VERSION`` the second is that version instead: e.g. a query-tower student paired over the same
passage vectors (``md2pr-index pair``), so each swap changes the query encoder over an unchanged
index, which is how a newly distilled student reaches a running service. While ``--clients``
closed-loop clients search for ``--duration`` seconds, ``CURRENT`` is switched ``--swaps``
times between the two copies, and after each switch the service is told (``POST
/admin/reload``) or left to notice (``--via watch``, the ``CURRENT`` watcher).

Reported: every request's status (the goal is zero failures; a 429 from the admission wait
budget is counted apart, with how many fell while a swap was loading, and the client waits
its Retry-After as the API asks), whether ``/info`` names the new
version (and its query encoder) after each swap, how long each swap took, and *stale* answers:
requests sent after a swap completed that were still answered by the old version (must be 0).

Run (quiet machine):  python benchmarks/service_swap.py
Smoke test:           python benchmarks/service_swap.py --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import httpx
from service_common import (
    add_index_arguments,
    add_report_arguments,
    command_line,
    load_queries,
    machine_facts,
    percentile,
    report_path,
    server,
    use_service_environment,
    write_report,
)


def point_current(root: Path, version: str) -> None:
    """Switch CURRENT as publishing does (temp file + os.replace)."""
    tmp = root / f".CURRENT.{secrets.token_hex(4)}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "CURRENT")


async def soak(
    url: str, root: Path, encoders: dict[str, str], queries: list[str], args: argparse.Namespace, key: str
) -> dict:
    """Search from ``args.clients`` clients while CURRENT alternates between the two versions of
    ``encoders`` (version name -> the first 12 hex digits of its query encoder's fingerprint)."""
    versions = list(encoders)
    records: list[tuple[float, float, str, str | None]] = []  # (sent, answered, status, index_version)
    swaps: list[dict] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=args.clients + 2, max_keepalive_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + args.duration

        async def searcher() -> None:
            while loop.time() < end:
                sent = loop.time()
                version = None
                try:
                    response = await client.post(
                        "/search", json={"query": queries[next(counter) % len(queries)], "top_k": 10}
                    )
                    status = str(response.status_code)
                    if response.status_code == 200:
                        version = response.json()["index_version"]
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    response = None
                records.append((sent, loop.time(), status, version))
                if status == "429":  # admission said "back off": a well-behaved client honours Retry-After
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        async def swapper() -> None:
            for i in range(args.swaps):
                await asyncio.sleep(max(0.0, start + (i + 1) * args.duration / (args.swaps + 1) - loop.time()))
                target = versions[(i + 1) % 2]
                began = loop.time()
                point_current(root, target)
                entry: dict = {"swap": i + 1, "target": target}
                if args.via == "reload":
                    reply = await client.post("/admin/reload", headers={"X-API-Key": key})
                    entry.update(reload_status=reply.status_code, reload=reply.json())
                else:
                    while (await client.get("/info")).json()["index"]["version"] != target:
                        if loop.time() - began > 60:
                            break
                        await asyncio.sleep(0.05)
                done = loop.time()
                info = (await client.get("/info")).json()
                info_version = info["index"]["version"]
                entry.update(
                    started_s=round(began - start, 3),
                    took_ms=round((done - began) * 1000, 1),
                    info_version=info_version,
                    info_query_encoder=info["model"]["fingerprint"][:12],
                    info_follows=info_version == target and info["model"]["fingerprint"][:12] == encoders[target],
                    _done=done,
                )
                swaps.append(entry)

        await asyncio.gather(swapper(), *(searcher() for _ in range(args.clients)))

    statuses = Counter(status for _, _, status, _ in records)
    refused = [sent for sent, _, status, _ in records if status == "429"]
    refused_in_swaps = sum(
        1 for sent in refused if any(start + s["started_s"] <= sent <= s["_done"] for s in swaps)
    )
    latencies = [(answered - sent) * 1000 for sent, answered, status, _ in records if status == "200"]
    # Stale: sent after swap i had completed and answered before swap i+1 began, by another version.
    # (An answer that comes after swap i+1 began may rightly be that swap's version: the versions
    # alternate, so it would look like the old one; such answers are not counted either way.)
    stale = 0
    for i, swap in enumerate(swaps):
        window_end = swaps[i + 1]["started_s"] + start if i + 1 < len(swaps) else float("inf")
        stale += sum(
            1
            for sent, answered, status, version in records
            if status == "200" and swap["_done"] < sent and answered < window_end and version != swap["target"]
        )
    for swap in swaps:
        del swap["_done"]
    return {
        "requests": len(records),
        "ok": statuses.get("200", 0),
        # failed: no answer, a server error or any other refusal; a 429 (the admission budget's
        # "retry after") is counted apart, and whether it fell while a swap was loading
        "failed": len(records) - statuses.get("200", 0) - len(refused),
        "refused_429": len(refused),
        "refused_429_during_swaps": refused_in_swaps,
        "statuses": dict(statuses),
        "qps": round(statuses.get("200", 0) / args.duration, 2),
        "p50_ms": round(percentile(latencies, 50) or 0, 3),
        "p99_ms": round(percentile(latencies, 99) or 0, 3),
        "answers_by_version": dict(Counter(v for *_, v in records if v)),
        "stale_answers": stale,
        "swaps": swaps,
        "swaps_completed": sum(1 for s in swaps if s["info_follows"]),
    }


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_index_arguments(parser, index_help="index root or directory to copy")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument(
        "--via", choices=["reload", "watch"], default="reload", help="POST /admin/reload, or the CURRENT watcher"
    )
    parser.add_argument(
        "--swap-to", type=Path, default=None,
        help="index root or version directory to alternate with --index (default: a copy of --index); "
             "e.g. a student paired over the same vectors",
    )
    parser.add_argument("--threads", type=int, default=None)
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.duration, args.swaps = 4, 6.0, 3
    output = report_path(args, "service-swap" if args.smoke else f"service-swap-{args.via}")

    from retrieval.index import read_manifest
    from retrieval.index_versions import resolve_index_dir

    source = resolve_index_dir(args.index)
    other = resolve_index_dir(args.swap_to) if args.swap_to else source
    work = Path(tempfile.mkdtemp(prefix="md2pr-swap-"))
    root = work / "index"
    encoders: dict[str, str] = {}
    for name, directory in ((f"{source.name}-a", source), (f"{other.name}-b", other)):
        shutil.copytree(directory, root / "versions" / name)
        manifest = read_manifest(directory)
        encoders[name] = (manifest.query_encoder or manifest.encoder).fingerprint[:12]
    versions = list(encoders)
    point_current(root, versions[0])
    key = secrets.token_urlsafe(16)
    env = {"MD2PR_INDEX": str(root), "MD2PR_ADMIN_API_KEY": key}
    if args.threads:
        env["MD2PR_TORCH_THREADS"] = str(args.threads)
    if args.via == "watch":
        env["MD2PR_WATCH_INTERVAL_S"] = "0.25"
    queries = load_queries(args.data, args.queries.split(","))
    report = {
        "kind": "service_swap",
        "command": command_line(),
        "machine": machine_facts(args.threads),
        "index": str(source),
        "swap_to": str(other) if args.swap_to else None,
        "query_encoders": encoders,
        "clients": args.clients,
        "duration_s": args.duration,
        "swaps_requested": args.swaps,
        "via": args.via,
        "smoke": args.smoke,
    }
    try:
        with server(env, work / "server.log") as url:
            print(
                f"{args.clients} clients for {args.duration:.0f} s, {args.swaps} swaps via {args.via} ...", flush=True
            )
            report.update(asyncio.run(soak(url, root, encoders, queries, args, key)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_report(report, output)
    print(
        f"requests {report['requests']}, failed {report['failed']} {report['statuses']} "
        f"(429 {report['refused_429']}, {report['refused_429_during_swaps']} while a swap loaded), QPS {report['qps']}, "
        f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms"
    )
    print(
        f"swaps: {report['swaps_completed']}/{args.swaps} with /info following; stale answers {report['stale_answers']}; "
        f"swap times (ms) {[s['took_ms'] for s in report['swaps']]}"
    )
    return (
        0 if report["failed"] == 0 and report["swaps_completed"] == args.swaps and report["stale_answers"] == 0 else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
