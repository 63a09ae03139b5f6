"""``md2pr-experiment``: the whole MD2PR experiment on one dataset, as one resumable command.

Example (SciFact on 2 CPU cores; again after a kill, it continues where it stopped)::

    md2pr-experiment --config scifact --budget cpu

Runs BM25 -> the base student -> hard-negative mining -> teacher training -> the main MD2PR
student (distilled, evaluated, indexed, served and evaluated over HTTP, with its model card) ->
the teacher's reranking -> each ablation -> the false-negative filter check -> more seeds, then
writes the report (``<run>/report/``, and with the default ``--results-dir`` the JSON and plots
in ``benchmarks/results/`` and ``benchmarks/RESULTS.md`` regenerated). The configuration is one
file per dataset (``pipeline/configs/<name>.json``, see :mod:`pipeline.config`); ``--budget``
picks its step sizes. ``--list`` shows every step, its command and whether it is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from retrieval.paths import PROJECT_ROOT, artifacts_dir, data_dir
from retrieval.runtime import configure_logging, run_main

from .config import load_config, shipped_configs
from .errors import PipelineError
from .runner import Runner, _write_json
from .steps import build_plan

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="scifact",
                        help=f"a shipped configuration ({', '.join(shipped_configs())}) or a JSON file (default: %(default)s)")
    parser.add_argument("--budget", default="cpu", help="step sizes from the configuration's budgets (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", help="distillation seeds (default: the budget's)")
    parser.add_argument("--run-root", type=Path, help="run directory (default: <artifacts>/experiments/<name>-<budget>)")
    parser.add_argument("--results-dir", type=Path, default=PROJECT_ROOT / "benchmarks" / "results",
                        help="where the report JSON and plots go (default: %(default)s); RESULTS.md beside it is regenerated")
    parser.add_argument("--no-results", action="store_true", help="write the report only into the run directory")
    parser.add_argument("--until", metavar="STEP", help="stop after this step")
    parser.add_argument("--rerun", metavar="STEP", nargs="+", default=[],
                        help="delete these steps' outputs (and those of the steps built on them) and run them again")
    parser.add_argument("--rerun-stale", action="store_true", help="rerun every step whose settings or inputs changed")
    parser.add_argument("--threads", type=int, help="torch/FAISS threads of every step (default: the budget's, else all cores)")
    parser.add_argument("--list", action="store_true", help="show the steps, their commands and status; run nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the report (and the model card) from the steps finished so far")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 a bad configuration or a failed/stale step)."""
    args = parse_args(argv)
    configure_logging(args.verbose)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def body() -> int:
        config, config_file = load_config(args.config)
        if args.budget not in config.budgets:
            raise PipelineError(f"{config_file}: no budget {args.budget!r} (has: {', '.join(config.budgets)})")
        budget = config.budgets[args.budget]
        if args.threads:
            budget = budget.model_copy(update={"threads": args.threads})
        seeds = args.seeds or budget.seeds
        if len(set(seeds)) != len(seeds):
            raise PipelineError(f"--seeds repeats a seed: {seeds}")
        for ref in (config.train, config.eval):
            if not ref.path().is_dir():
                raise PipelineError(f"{config_file}: dataset {ref.dataset!r} not found at {ref.path()} (set MD2PR_DATA_DIR)")
        root = args.run_root or artifacts_dir() / "experiments" / f"{config.name}-{args.budget}"
        plan = build_plan(config, args.budget, budget, seeds, root)
        runner = Runner(plan, results_dir=None if args.no_results else args.results_dir)
        if args.list:
            for status in runner.status():
                ready = all(runner.marker(n) is not None for n in status.step.needs)
                command = status.step.command() if ready else f"(after {', '.join(status.step.needs)})"
                print(f"{status.state:<8} {status.step.name:<30} {command}")
            return 0
        if args.report_only:
            print(json.dumps({"run_root": str(root), "rewritten": runner.refresh(),
                              "report": str(root / "report" / "REPORT.md")}))
            return 0
        _write_json(root / "experiment.json", {
            "name": config.name, "budget": args.budget, "seeds": seeds, "config": config.model_dump(),
            "config_file": str(config_file), "data_dir": str(data_dir()),
        })
        outcome = runner.run(until=args.until, rerun=tuple(args.rerun), rerun_stale=args.rerun_stale)
        ran = sum(1 for v in outcome.values() if v == "ran")
        print(json.dumps({"run_root": str(root), "steps": len(outcome), "ran": ran,
                          "cached": len(outcome) - ran, "report": str(root / "report" / "REPORT.md")}))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
