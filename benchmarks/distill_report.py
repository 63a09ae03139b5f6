"""Test-set quality of distilled students, their training curves and the false-negative filter check.

For each finished ``md2pr-distill`` run given as ``NAME=RUN_DIR``: the selected student
(``RUN_DIR/model``, searched through the run's own Flat index of that student) is evaluated
on ``--split`` of ``--dataset`` with the project's metrics (nDCG@10, MRR@10, R@50/100/1000), next
to BM25 and the base student (the run's ``indexes/s0``). Per iteration it reports dev metrics,
the false-negative threshold and how many negatives it removed, and, for a run made with
``--hide-positives``, the precision and recall with which the filter flagged the hidden
positives that mining returned as negatives. Writes ``benchmarks/results/distill-<tag>.json``
(with the command line and machine facts), one PNG of training curves per run (each loss term
per step, dev nDCG@10 per iteration) beside it, and prints a table.

Run from the project root after the runs (see README, "Distil the student")::

    python benchmarks/distill_report.py --tag scifact --dataset ../shared/data/scifact --split test \\
        --run md2pr=artifacts/students/md2pr-cpu --run no-word-kd=artifacts/students/no-word-kd \\
        --run no-sentence-kd=artifacts/students/no-sentence-kd --run static-threshold=artifacts/students/static \\
        --run no-filter=artifacts/students/no-filter --run hidden-20=artifacts/students/hidden-20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from service_common import command_line, machine_facts, write_report  # noqa: E402

# One implementation of the labels, the filter check and the curves, shared with md2pr-experiment's report.
from pipeline.report import ablation_label, filter_check_rows, plot_curves, read_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR", help="a finished md2pr-distill run (repeat)")
    parser.add_argument("--dataset", type=Path, default=HERE.parent.parent / "shared" / "data" / "scifact")
    parser.add_argument("--split", default="test")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--tag", default="scifact", help="output name: results/distill-<tag>.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="mark the result as a smoke test (not rendered)")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from retrieval.bm25 import BM25Index
    from retrieval.datasets import load_dataset
    from retrieval.metrics import DEFAULT_MEASURES, evaluate_run
    from retrieval.retriever import Retriever
    from retrieval.runtime import configure_threads

    configure_threads(args.threads)
    runs = []
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            parser.error(f"--run takes NAME=RUN_DIR, not {spec!r}")
        run_dir = Path(path)
        if not (run_dir / "report.json").is_file():
            parser.error(f"{run_dir}: not a finished distillation run (no report.json)")
        runs.append((name, run_dir))

    dataset = load_dataset(args.dataset, args.split)
    report: dict = {
        "kind": "distill",
        "command": command_line(),
        "machine": machine_facts(args.threads),
        "dataset": str(args.dataset),
        "split": args.split,
        "queries": len(dataset.queries),
        "depth": args.depth,
        "smoke": args.smoke,
        "baselines": {},
        "runs": {},
    }
    started = time.monotonic()
    bm25 = BM25Index.build(dataset.iter_corpus())
    report["baselines"]["bm25"] = evaluate_run(dataset.qrels, bm25.search_run(dataset.queries, args.depth), DEFAULT_MEASURES)

    def evaluate_index(index: Path, encoder: Path | str | None = None) -> dict[str, float]:
        retriever = Retriever.open(index, encoder)
        try:
            return evaluate_run(dataset.qrels, retriever.search_run(dataset.queries, args.depth), DEFAULT_MEASURES)
        finally:
            retriever.close()

    for name, run_dir in runs:
        summary = json.loads((run_dir / "report.json").read_text())
        config = summary["config"]
        selected = summary["selected_iteration"]
        base_key = f"base student ({config['student']})"
        if base_key not in report["baselines"]:
            state = json.loads((run_dir / "state.json").read_text())
            report["baselines"][base_key] = evaluate_index(Path(state.get("base_index") or run_dir / "indexes" / "s0"))
        log = read_jsonl(run_dir / "log.jsonl")
        iterations = summary["iterations"]
        png = args.output_dir / f"distill-{args.tag}-{name}.png"
        plotted = plot_curves(f"{name}: {ablation_label(config)}", log, iterations, summary.get("base_dev"), png)
        report["runs"][name] = {
            "run_dir": str(run_dir),
            "ablation": ablation_label(config),
            "selected_iteration": selected,
            "test": evaluate_index(run_dir / "indexes" / f"s{selected}", run_dir / "model"),
            "base_dev": summary.get("base_dev"),
            "iterations": [
                {k: it.get(k) for k in ("iteration", "mine", "filter", "train", "dev", "seconds")} for it in iterations
            ],
            "steps": len(log),
            "curves": png.relative_to(HERE.parent).as_posix() if plotted and png.is_relative_to(HERE.parent) else (str(png) if plotted else None),
            "log": str(run_dir / "log.jsonl"),
            "config": config,
        }
    report["seconds"] = round(time.monotonic() - started, 1)
    output = args.output_dir / f"distill-{args.tag}.json"
    write_report(report, output)

    names = ["nDCG@10", "MRR@10", "R@100"]
    print(f"\n{'system':<55}" + "".join(f"{n:>10}" for n in names))
    for name, metrics in report["baselines"].items():
        print(f"{name:<55}" + "".join(f"{metrics[n]:>10.4f}" for n in names))
    for name, run in report["runs"].items():
        print(f"{name + ' (' + run['ablation'] + ')':<55}" + "".join(f"{run['test'][n]:>10.4f}" for n in names))
        checks = {c["iteration"]: c for c in filter_check_rows(run["iterations"])}
        for it in run["iterations"]:
            f = it["filter"] or {}
            hidden = checks.get(it["iteration"])
            extra = f"  hidden P/R {hidden['precision']}/{hidden['recall']}" if hidden else ""
            dev = (it.get("dev") or {}).get("nDCG@10")
            print(f"    iteration {it['iteration']}: dev nDCG@10 {dev}, floor {f.get('floor')}, flagged {f.get('flagged')}/{f.get('negatives')}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
