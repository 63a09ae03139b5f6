"""The cross-encoder head, measured: BERT pooler + linear vs mean pooling over the joint sequence.

Trains the same teacher twice from the same backbone, training file, seed, groups and learning
rates, changing only ``--head``, for ``--steps`` steps each; records the per-step loss (and its
mean over windows of ``--window`` steps) and the dev nDCG@10 / MRR@10 of each at the end.
Writes ``benchmarks/results/teacher-heads.json`` (with the command line and machine facts) and
prints a table. The listwise loss at chance is ln(1 + negatives).

Run from the project root (after ``md2pr-mine``) on a quiet machine::

    python benchmarks/teacher_heads.py --training-file artifacts/teacher/scifact-train.jsonl \\
        --steps 150 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from service_common import command_line, machine_facts, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-file", type=Path, required=True)
    parser.add_argument("--backbone", default="builtin:all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--dev-depth", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "teacher-heads.json")
    parser.add_argument("--smoke", action="store_true", help="mark the result as a smoke test (not rendered)")
    args = parser.parse_args(argv)

    from retrieval.runtime import configure_logging, configure_threads
    from training.teacher import TeacherTrainConfig, train_teacher

    configure_logging()
    machine = machine_facts(args.threads)
    configure_threads(args.threads)
    base = TeacherTrainConfig(
        backbone=args.backbone, max_length=args.max_length, negatives=args.negatives,
        groups_per_step=args.groups_per_step, epochs=100, max_steps=args.steps, dev_depth=args.dev_depth,
        save_every=10**6, fit_fusion=False,
    )
    heads = {}
    with tempfile.TemporaryDirectory() as tmp:
        for head in ("pooler", "mean"):
            config = replace(base, head=head)
            out = Path(tmp) / head
            train_teacher(args.training_file, out, config, show_progress=False)
            losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
            dev = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
            windows = [
                {"steps": f"{i + 1}-{min(i + args.window, len(losses))}", "mean_loss": round(statistics.fmean(losses[i : i + args.window]), 4)}
                for i in range(0, len(losses), args.window)
            ]
            heads[head] = {"config": asdict(config), "losses": losses, "windows": windows, "dev": dev[-1]["metrics"] if dev else {}}
    report = {
        "kind": "teacher_heads",
        "smoke": args.smoke,
        "command": command_line(argv),
        "machine": machine,
        "training_file": str(args.training_file),
        "chance_loss": round(math.log(1 + args.negatives), 4),
        "heads": heads,
    }
    write_report(report, args.output)
    print(f"chance loss ln({1 + args.negatives}) = {report['chance_loss']}")
    print("| head | " + " | ".join(w["steps"] for w in heads["mean"]["windows"]) + " | dev nDCG@10 | dev MRR@10 |")
    print("|---" * (len(heads["mean"]["windows"]) + 3) + "|")
    for head, h in heads.items():
        cells = [str(w["mean_loss"]) for w in h["windows"]]
        print(f"| {head} | " + " | ".join(cells) + f" | {h['dev'].get('nDCG@10', float('nan')):.4f} | {h['dev'].get('MRR@10', float('nan')):.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
