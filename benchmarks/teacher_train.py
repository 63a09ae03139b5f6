"""Train the teacher and record what the run measured: loss curve, dev metrics, fused weights, wall time.

Runs ``md2pr-train-teacher`` with the arguments after ``--`` (in-process), then writes
``benchmarks/results/teacher-train-<name>.json`` (kind ``teacher_train``: the exact command,
machine facts, configuration, mean loss per window of steps, dev nDCG@10 / MRR@10 per epoch,
dev metrics of the cross-encoder, the first stages and the fused teacher, the fitted fusion
weights and the wall time) and prints a summary. ``--summarize DIR`` records a run that already
finished instead (its ``config.json``, ``loss.jsonl``, ``dev.jsonl`` and ``report.json``).

Run from the project root (after ``md2pr-mine``) on a quiet machine::

    python benchmarks/teacher_train.py --name minilm-cpu -- \\
        --training-file artifacts/teacher/scifact-train.jsonl --output-dir artifacts/teacher/minilm-cpu \\
        --preset cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from service_common import machine_facts


def summarize(run_dir: Path, window: int) -> dict:
    """The measured facts of a finished run directory."""
    config = json.loads((run_dir / "config.json").read_text())
    steps = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]
    dev = [json.loads(line) for line in (run_dir / "dev.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "report.json").read_text())
    losses = [s["loss"] for s in steps]
    return {
        "config": config["teacher"],
        "training_file": config["training_file"],
        "steps": len(steps),
        "train_seconds": steps[-1]["seconds"] if steps else 0,
        "loss_windows": [
            {"steps": f"{i + 1}-{min(i + window, len(losses))}", "mean_loss": round(statistics.fmean(losses[i : i + window]), 4)}
            for i in range(0, len(losses), window)
        ],
        "dev_per_epoch": [{"epoch": d["epoch"], "step": d["step"], **d["metrics"]} for d in dev],
        "best_step": report.get("best_step"),
        "fit_queries": report.get("fit_queries"),
        "dev_queries": report.get("dev_queries"),
        "dev_metrics": report.get("dev_metrics", {}),
        "fusion": {k: v for k, v in (report.get("fusion") or {}).items() if k != "bm25"},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="result file suffix, e.g. minilm-cpu")
    parser.add_argument("--summarize", type=Path, help="record this finished run directory instead of training")
    parser.add_argument("--command", help="with --summarize: the command that produced the run")
    parser.add_argument("--note", default="", help="anything the numbers need to be read with (e.g. machine load)")
    parser.add_argument("--window", type=int, default=20, help="steps per loss window (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="for the machine facts")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(own)
    machine = machine_facts(args.threads)
    if args.summarize:
        run_dir = args.summarize
        command = args.command or f"(summarized from {run_dir})"
        wall = None
    else:
        if "--output-dir" not in train_args:
            parser.error("pass md2pr-train-teacher's arguments after --, including --output-dir")
        from training.teacher import main as train_main

        started = time.monotonic()
        if train_main(train_args) != 0:
            return 1
        wall = round(time.monotonic() - started, 1)
        run_dir = Path(train_args[train_args.index("--output-dir") + 1])
        command = shlex.join(["md2pr-train-teacher", *train_args])
    result = {
        "kind": "teacher_train",
        "name": args.name,
        "command": command,
        "recorded_by": shlex.join(["python", "benchmarks/teacher_train.py", *argv]),
        "machine": machine,
        "wall_seconds": wall,
        "note": args.note,
        **summarize(run_dir, args.window),
    }
    output = args.output or HERE / "results" / f"teacher-train-{args.name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"{result['steps']} steps in {result['train_seconds']:.0f} s; dev per epoch: {result['dev_per_epoch']}")
    for name, metrics in result["dev_metrics"].items():
        print(f"dev {name}: nDCG@10 {metrics['nDCG@10']:.4f}  MRR@10 {metrics['MRR@10']:.4f}")
    print("fusion:", result["fusion"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
