"""Retrieval quality and latency of each search mode, measured over HTTP against the service.

Starts ``md2pr-serve`` on the given index (or uses ``--url``), sends every judged query of a
split one at a time (concurrency 1) to ``POST /search`` in each mode, and computes the
metrics from the hits the service returned, so the figures are those of the deployed
artifact. Writes ``benchmarks/results/hybrid-http-<dataset>-<split>.json`` and prints a table.

    python benchmarks/hybrid_http.py --index artifacts/indexes/scifact --dataset ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_common import RESULTS, command_line, machine_facts, percentile, server, write_report  # noqa: E402

from retrieval.datasets import load_dataset  # noqa: E402
from retrieval.errors import RetrievalError  # noqa: E402
from retrieval.metrics import DEFAULT_MEASURES, evaluate_run, format_table, subset, unseen_positive_queries  # noqa: E402


def measure(url: str, queries: dict[str, str], mode: str, top_k: int) -> tuple[dict, list[float], list[float]]:
    """Run every query in ``mode``; returns the run, client latencies (ms) and server took_ms."""
    run: dict[str, dict[str, float]] = {}
    client_ms: list[float] = []
    server_ms: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for text in list(queries.values())[:3]:  # warm-up, not measured
            client.post("/search", json={"query": text, "top_k": top_k, "mode": mode, "return_text": False})
        for qid, text in queries.items():
            started = time.perf_counter()
            response = client.post("/search", json={"query": text, "top_k": top_k, "mode": mode, "return_text": False})
            client_ms.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            body = response.json()
            server_ms.append(body["took_ms"])
            run[qid] = {h["docid"]: h["score"] for h in body["hits"]}
    return run, client_ms, server_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index root to serve (starts md2pr-serve)")
    parser.add_argument("--url", help="an already running service instead of --index")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--modes", nargs="+", default=["dense", "bm25", "hybrid"])
    parser.add_argument("--top-k", type=int, default=100, help="hits per query (max 100: R@100 is the deepest measure)")
    parser.add_argument("--relevance-level", type=int, default=1)
    parser.add_argument("--unseen-from", default=None,
                        help="also measure the queries none of whose positives is a positive of this split (e.g. train)")
    parser.add_argument("--threads", type=int, default=2, help="MD2PR_TORCH_THREADS of the started service")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if bool(args.index) == bool(args.url):
        parser.error("give exactly one of --index or --url")
    try:
        dataset = load_dataset(args.dataset, args.split)
        seen = load_dataset(args.dataset, args.unseen_from).qrels if args.unseen_from else None
    except RetrievalError as exc:
        parser.error(str(exc))
    output = args.output or RESULTS / f"hybrid-http-{args.dataset.name}-{args.split.replace(':', '-')}.json"
    unseen = None
    if seen is not None:
        unseen = unseen_positive_queries(dataset.qrels, seen, args.relevance_level)
        if not unseen:
            parser.error(f"--unseen-from {args.unseen_from}: no query of {args.split} has only unseen positives")

    def run_all(url: str) -> dict:
        info = httpx.get(f"{url}/info", timeout=30).json()
        modes = {}
        for mode in args.modes:
            run, client_ms, server_ms = measure(url, dataset.queries, mode, args.top_k)
            metrics = evaluate_run(dataset.qrels, run, relevance_level=args.relevance_level)
            metrics.pop("R@1000", None)  # at most 100 hits come back
            modes[mode] = {
                "metrics": metrics,
                **({"metrics_unseen": evaluate_run(subset(dataset.qrels, unseen), run, {m: DEFAULT_MEASURES[m] for m in metrics},
                                                   relevance_level=args.relevance_level)} if unseen else {}),
                "latency_ms": {
                    "client_p50": percentile(client_ms, 50),
                    "client_p95": percentile(client_ms, 95),
                    "server_p50": percentile(server_ms, 50),
                    "server_p95": percentile(server_ms, 95),
                },
            }
        return {"info": info, "modes": modes}

    started = time.monotonic()
    if args.index:
        env = {"MD2PR_INDEX": str(args.index.resolve()), "MD2PR_TORCH_THREADS": str(args.threads)}
        with server(env, Path("/tmp/hybrid_http_server.log")) as url:
            measured = run_all(url)
    else:
        measured = run_all(args.url)
    report = {
        "kind": "hybrid_http",
        "command": command_line(),
        "machine": machine_facts(args.threads),
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(dataset.queries),
        **({"unseen_positive": {"from": args.unseen_from, "queries": len(unseen)}} if unseen else {}),
        "top_k": args.top_k,
        "relevance_level": args.relevance_level,
        "index_version": measured["info"]["index"]["version"],
        "fusion": measured["info"]["index"]["fusion"],
        "model": measured["info"]["model"]["source"],
        "backend": measured["info"]["model"].get("backend"),
        "modes": measured["modes"],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(format_table({m: r["metrics"] for m, r in measured["modes"].items()}))
    for mode, r in measured["modes"].items():
        lat = r["latency_ms"]
        print(f"{mode:7s} client p50 {lat['client_p50']:.1f} ms p95 {lat['client_p95']:.1f} ms; server p50 {lat['server_p50']:.1f} ms")
    write_report(report, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
