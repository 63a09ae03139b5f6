"""The teacher's cost per query next to the student's: the gap that makes distillation worth it.

For each of ``--queries`` SciFact test claims: the teacher (a cross-encoder) scores the claim
against its BM25 top ``--pairs`` passages (what reranking costs per query), and the student
(the dual encoder behind a built index) encodes the claim and searches the index for the same
number of hits (what the service does per query). Same process, same thread count, one query
at a time, after a warm-up query. Writes ``benchmarks/results/teacher-cost.json`` (with the
command line and machine facts) and prints a table.

Run from the project root on a quiet machine::

    python benchmarks/teacher_cost.py --teacher artifacts/teacher/minilm-cpu/model \\
        --index artifacts/indexes/scifact --queries 50 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from service_common import command_line, machine_facts, percentile, write_report


def _summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="cross-encoder directory")
    parser.add_argument("--index", type=Path, required=True, help="the student's index (root or version)")
    parser.add_argument("--dataset", type=Path, default=HERE.parent.parent / "shared" / "data" / "scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=100, help="passages per query (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "teacher-cost.json")
    parser.add_argument("--smoke", action="store_true", help="mark the result as a smoke test (not rendered)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from retrieval.bm25 import BM25Index
    from retrieval.cross_encoder import CrossEncoder
    from retrieval.datasets import load_dataset
    from retrieval.retriever import Retriever
    from retrieval.runtime import configure_threads

    machine = machine_facts(args.threads)
    configure_threads(args.threads)
    dataset = load_dataset(args.dataset, args.split)
    queries = list(dataset.queries.values())[: args.queries + 1]
    corpus = {p.docid: p.full_text for p in dataset.iter_corpus()}
    bm25 = BM25Index.build(dataset.iter_corpus())
    candidates = [[d for d, _ in hits] for hits in bm25.search(queries, args.pairs)]
    teacher = CrossEncoder.from_pretrained(args.teacher)
    retriever = Retriever.open(args.index)
    teacher_ms, student_ms, pairs = [], [], []
    try:
        for i, (query, docids) in enumerate(zip(queries, candidates)):
            texts = [corpus[d] for d in docids]
            started = time.perf_counter()
            teacher.score([query] * len(texts), texts, batch_size=args.batch_size)
            elapsed_teacher = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            retriever.search([query], top_k=args.pairs)
            elapsed_student = (time.perf_counter() - started) * 1000
            if i == 0:
                continue  # warm-up
            teacher_ms.append(elapsed_teacher)
            student_ms.append(elapsed_student)
            pairs.append(len(texts))
    finally:
        retriever.close()
    report = {
        "kind": "teacher_cost",
        "smoke": args.smoke,
        "command": command_line(argv),
        "machine": machine,
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(teacher_ms),
        "pairs_per_query": round(statistics.fmean(pairs), 1) if pairs else 0,
        "teacher": {
            "source": args.teacher, "fingerprint": teacher.fingerprint, "head": teacher.config.head,
            "max_length": teacher.config.max_length, "batch_size": args.batch_size, **_summary(teacher_ms),
        },
        "student": {
            "index": str(args.index), "encoder": retriever.index.manifest.encoder.source,
            "factory": retriever.index.manifest.factory, "top_k": args.pairs, **_summary(student_ms),
        },
    }
    report["teacher_over_student_p50"] = round(report["teacher"]["p50_ms"] / max(report["student"]["p50_ms"], 1e-9), 1)
    write_report(report, args.output)
    print(f"{report['queries']} queries, {report['pairs_per_query']} passages each, {args.threads} threads")
    print("| system | p50 ms/query | p90 ms/query | mean ms/query |")
    print("|---|---:|---:|---:|")
    for name in ("teacher", "student"):
        s = report[name]
        print(f"| {name} | {s['p50_ms']} | {s['p90_ms']} | {s['mean_ms']} |")
    print(f"teacher / student (p50): {report['teacher_over_student_p50']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
