"""Running a plan: a cache of finished steps, resumption, and the pipeline's own steps.

**The cache.** A finished step leaves ``steps/<step>.json``::

    {"step": "teacher", "command": "md2pr-train-teacher --training-file ...", "argv": [...],
     "key": "<sha256>", "seconds": 2817.4, "finished_at": "2026-12-01T05:31:02+00:00"}

``key`` hashes the step's tool and arguments and the keys of the steps it needs, so a step is
*done* when its file exists with the key the plan computes now. A step whose settings or inputs
changed since it ran is *stale*: the runner stops and says so rather than overwrite work that
took an hour (``--rerun STEP`` deletes a step's outputs and those of every step built on it;
``--rerun-stale`` does that for every stale step). A step that was killed has no file and runs
again; the jobs themselves resume (index builds find their staging directory, the teacher and
the distillation get ``--resume`` when they left a checkpoint), so a killed run loses at most
the work since its last checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrieval.jsonio import write_json_atomic

from .errors import PipelineError
from .steps import TOOLS, Plan, Step

logger = logging.getLogger(__name__)

#: Served and in-process metrics of the same student must agree within this (same encoder, same
#: exact index family; only float summation order may differ).
SERVED_TOLERANCE = 1e-3
#: Measures comparable over HTTP: the service returns at most 100 hits a query.
SERVED_MEASURES = ("nDCG@10", "MRR@10", "R@50", "R@100")


@dataclass(frozen=True)
class StepStatus:
    """Where a step stands: ``done``, ``stale`` (its key changed), or ``pending``."""

    step: Step
    state: str
    key: str | None


def _marker_path(root: Path, name: str) -> Path:
    return root / "steps" / f"{name.replace(':', '.')}.json"


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)


class Runner:
    """Runs the steps of a :class:`pipeline.steps.Plan` in order (see the module docstring)."""

    def __init__(self, plan: Plan, results_dir: Path | None = None, render: bool = True) -> None:
        self.plan = plan
        self.root = plan.root
        self.results_dir = results_dir
        self.render = render

    # ---- the cache
    def marker(self, name: str) -> dict[str, Any] | None:
        path = _marker_path(self.root, name)
        return json.loads(path.read_text()) if path.is_file() else None

    def key(self, step: Step) -> str | None:
        """The step's identity now, or None when a step it needs is not done (its arguments may not exist yet)."""
        needs = {}
        for name in step.needs:
            marker = self.marker(name)
            if marker is None:
                return None
            needs[name] = marker["key"]
        payload = json.dumps({"tool": step.tool, "argv": step.argv(), "needs": needs}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def status(self) -> list[StepStatus]:
        """Every step's state, in plan order (computed from the markers; runs nothing)."""
        out = []
        for step in self.plan.steps:
            marker = self.marker(step.name) if step.cached else None
            key = self.key(step) if marker is not None else None
            if marker is None:
                out.append(StepStatus(step, "pending", None))
            else:
                out.append(StepStatus(step, "done" if marker["key"] == key else "stale", key))
        return out

    def dependents(self, names: set[str]) -> set[str]:
        """``names`` and every step that needs one of them, transitively."""
        closed = set(names)
        changed = True
        while changed:
            changed = False
            for step in self.plan.steps:
                if step.name not in closed and closed.intersection(step.needs):
                    closed.add(step.name)
                    changed = True
        return closed

    def forget(self, names: set[str]) -> None:
        """Delete the outputs and markers of these steps (``--rerun``)."""
        for step in self.plan.steps:
            if step.name not in names:
                continue
            for path in step.outputs:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            _marker_path(self.root, step.name).unlink(missing_ok=True)
            logger.info("%s: outputs deleted, will run again", step.name)

    # ---- running
    def run(self, until: str | None = None, rerun: tuple[str, ...] = (), rerun_stale: bool = False) -> dict[str, str]:
        """Run every step not done yet, in order; returns each step's outcome (ran, cached, skipped).

        Stops with a :class:`PipelineError` at a failed or stale step; ``until`` stops after that step.
        """
        names = [s.name for s in self.plan.steps]
        for name in (*rerun, *([until] if until else [])):
            if name not in names:
                raise PipelineError(f"no step {name!r} in this plan (md2pr-experiment --list shows them)")
        if rerun:
            self.forget(self.dependents(set(rerun)))
        self.root.mkdir(parents=True, exist_ok=True)
        outcome: dict[str, str] = {}
        total = len(self.plan.steps)
        for number, step in enumerate(self.plan.steps, 1):
            marker = self.marker(step.name) if step.cached else None
            if marker is not None:
                key = self.key(step)
                if marker["key"] == key:
                    outcome[step.name] = "cached"
                    logger.info("[%d/%d] %s: done (cached)", number, total, step.name)
                    if step.name == until:
                        break
                    continue
                if not rerun_stale:
                    raise PipelineError(
                        f"step {step.name} is stale: its settings or inputs changed since it ran "
                        f"(was: {marker['command']}); rerun it with --rerun {step.name} (deletes its outputs and "
                        "those of the steps built on it) or --rerun-stale"
                    )
                self.forget(self.dependents({step.name}))
            logger.info("[%d/%d] %s: %s", number, total, step.name, step.command())
            started = time.monotonic()
            self._execute(step)
            seconds = time.monotonic() - started
            outcome[step.name] = "ran"
            if step.cached:
                _write_json(_marker_path(self.root, step.name), {
                    "step": step.name, "command": step.command(), "argv": step.argv(), "key": self.key(step),
                    "seconds": round(seconds, 1), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                })
            logger.info("[%d/%d] %s: finished in %.1f s", number, total, step.name, seconds)
            if step.name == until:
                break
        return outcome

    def refresh(self) -> list[str]:
        """Rewrite what is regenerated on every run (the model card, the report) from the finished steps only."""
        done = []
        for step in self.plan.steps:
            if not step.cached and all(self.marker(n) is not None for n in step.needs):
                self._execute(step)
                done.append(step.name)
        return done

    def _execute(self, step: Step) -> None:
        if step.tool in TOOLS:
            argv = step.argv() + (["--resume"] if step.resume and step.resume() else [])
            module, _, function = TOOLS[step.tool].partition(":")
            code = getattr(importlib.import_module(module), function)(argv)
            if code != 0:
                raise PipelineError(
                    f"step {step.name} failed (exit {code}): {shlex.join([step.tool, *argv])}; fix the cause and run "
                    "md2pr-experiment again: finished steps are kept and killed jobs resume"
                )
        elif step.tool == "served":
            self._served(Path(step.argv()[0]), step.argv()[1:])
        elif step.tool == "model-card":
            self._model_card(Path(step.argv()[0]))
        elif step.tool == "report":
            self._report()
        else:
            raise PipelineError(f"step {step.name}: unknown tool {step.tool!r}")

    # ---- the pipeline's own steps
    def _served(self, index_root: Path, evaluate_args: list[str]) -> None:
        """Serve the main student's published index, evaluate it over HTTP, compare with in-process."""
        from evaluation.evaluate import main as evaluate_main
        from service.launcher import running_service

        # the encoder comes from the index manifest, as in a deployment
        env: dict[str, str | None] = {"MD2PR_INDEX": str(index_root), "MD2PR_ACCESS_LOG": "false", "MD2PR_ENCODER_PATH": None}
        if self.plan.budget.threads:
            env["MD2PR_TORCH_THREADS"] = str(self.plan.budget.threads)
        with running_service(env, self.root / "eval" / "served.log", ready_timeout_s=600) as url:
            argv = [*evaluate_args, "--service-url", url]
            code = evaluate_main(argv)
        if code != 0:
            raise PipelineError(f"evaluation over HTTP failed (exit {code}): {shlex.join(['md2pr-evaluate', *argv])}")
        self._check_served(self.root / "eval" / "served.json")

    def _check_served(self, served_json: Path) -> None:
        plan = self.plan
        in_process = json.loads((self.root / "eval" / f"{plan.config.main_variant}-s{plan.seeds[0]}.json").read_text())
        served = json.loads(served_json.read_text())
        local = next(iter(in_process["systems"].values()))["metrics"]
        remote = next(iter(served["systems"].values()))["metrics"]
        rows = {m: {"served": remote.get(m), "in_process": local.get(m)} for m in SERVED_MEASURES if m in local and m in remote}
        for row in rows.values():
            row["difference"] = abs(row["served"] - row["in_process"])
        reproduced = bool(rows) and all(r["difference"] <= SERVED_TOLERANCE for r in rows.values())
        _write_json(self.root / "eval" / "served-check.json",
                    {"tolerance": SERVED_TOLERANCE, "measures": rows, "reproduced": reproduced})
        if not reproduced:
            raise PipelineError(f"the served index does not reproduce the in-process metrics: {json.dumps(rows)}")
        logger.info("served index reproduces the in-process metrics (%s)",
                    ", ".join(f"{m} {r['served']:.4f}" for m, r in rows.items()))

    def _model_card(self, student_dir: Path) -> None:
        from .model_card import write_model_card
        from .report import collect

        path = write_model_card(student_dir, collect(self.root))
        logger.info("model card: %s", path)

    def _report(self) -> None:
        """``report/`` in the run directory; with a results directory, its JSON and plots there too."""
        from .report import collect, plot_links, render_markdown, write_plots

        report = collect(self.root)
        out = self.root / "report"
        prefix = f"experiment-{self.plan.config.name}-{self.plan.budget_name}"
        paths = write_plots(report, self.root, self.results_dir / "plots" if self.results_dir else out, prefix)
        links = plot_links(paths, prefix, out)
        _write_json(out / "report.json", {**report, "plots": links})
        (out / "REPORT.md").write_text("\n".join(render_markdown(report, links)) + "\n")
        logger.info("report: %s", out / "REPORT.md")
        if self.results_dir is None:
            return
        # benchmarks/results/<prefix>.json, plots linked relative to benchmarks/ (where RESULTS.md is)
        _write_json(self.results_dir / f"{prefix}.json",
                    {**report, "kind": "experiment", "plots": plot_links(paths, prefix, self.results_dir.parent)})
        card = self.plan.main_student / "MODEL_CARD.md"
        if card.is_file():  # the card travels with the checkpoint; this copy is for readers of the repository
            shutil.copyfile(card, self.results_dir / f"{prefix}-MODEL_CARD.md")
        renderer = self.results_dir.parent / "render_results.py"
        if self.render and renderer.is_file():
            subprocess.run([sys.executable, str(renderer), "--results-dir", str(self.results_dir),
                            "--output", str(self.results_dir.parent / "RESULTS.md")], check=True)
            logger.info("rendered %s", self.results_dir.parent / "RESULTS.md")
