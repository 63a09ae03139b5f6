"""The steps of an experiment, in order, each a command of one of the project's jobs.

A step is a console script of the project (``md2pr-evaluate``, ``md2pr-build-index``,
``md2pr-mine``, ``md2pr-train-teacher``, ``md2pr-distill``) with its arguments, or one of three
steps of the pipeline itself (``served``, ``model-card``, ``report``). The commands are exactly
what a person would type, so the report can show them and anyone can rerun one by hand.

The run directory (``<artifacts>/experiments/<name>-<budget>``)::

    experiment.json               the configuration, budget and seeds of the run
    steps/<step>.json             one per finished step (the cache; see pipeline.runner)
    indexes/base/                 the base student's index of the training corpus (mining, fused teacher)
    indexes/base-eval/            ... of the evaluation corpus, when it is another one
    eval/bm25.json, base.json     md2pr-evaluate outputs: BM25, the base student
    eval/rerank.json              the teacher reranking the first stages' top hits
    eval/<variant>-s<seed>.json   each distilled student
    eval/served.json              the main student's published index, evaluated over HTTP
    eval/served-check.json        served vs in-process metrics of the same student
    mining/train.jsonl            the teacher's training file (md2pr-mine)
    teacher/                      md2pr-train-teacher's run; the teacher is teacher/model
    students/<variant>-s<seed>/   md2pr-distill runs; students/filter-check-s<seed>/ hides positives
    indexes/<variant>-s<seed>/    a student's index of the evaluation corpus, when it is another one
    indexes/student/              the main student's published index (serve it: MD2PR_INDEX=...)
    report/                       REPORT.md, report.json and the plots

Order: the baselines, the teacher, then the main student through to its served evaluation and
model card, then the teacher's reranking evaluation, the false-negative filter check, the
ablations and the further seeds — so that a CPU run stopped early has its most important rows first.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Budget, ExperimentConfig

#: Console scripts the pipeline runs, and the ``main(argv) -> int`` behind each.
TOOLS: dict[str, str] = {
    "md2pr-evaluate": "evaluation.evaluate:main",
    "md2pr-build-index": "index_build.cli:main",
    "md2pr-mine": "training.mining:main",
    "md2pr-train-teacher": "training.teacher:main",
    "md2pr-distill": "training.distill_cli:main",
    "md2pr-index": "index_build.index_cli:main",
}

#: Steps done by the pipeline itself (pipeline.runner), not by a console script.
INTERNAL = ("served", "model-card", "report")


@dataclass
class Step:
    """One step: a tool and its arguments (computed when the step runs), what it needs and writes.

    ``args`` is a function because some arguments exist only once earlier steps finished (the
    iteration a distillation run selected). ``resume`` says whether to add ``--resume`` (a
    killed run left state to continue); it is not part of the step's identity.
    """

    name: str
    tool: str
    args: Callable[[], list[str]]
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    resume: Callable[[], bool] | None = None
    group: str = ""  # what the step is for, in the plan listing
    cached: bool = True  # False: runs every time (the report)

    def argv(self) -> list[str]:
        """The arguments without ``--resume`` (the step's identity in the cache)."""
        return self.args()

    def command(self) -> str:
        """The shell command, as shown in the report."""
        argv = self.argv()
        if self.tool == "served":  # [index root, md2pr-evaluate arguments but the URL]
            return (f"MD2PR_INDEX={shlex.quote(argv[0])} md2pr-serve --port PORT & "
                    + shlex.join(["md2pr-evaluate", *argv[1:], "--service-url", "http://127.0.0.1:PORT"]))
        return shlex.join([self.tool, *argv])


def flags(settings: dict[str, Any]) -> list[str]:
    """``{"max_steps": 40, "attention_layers": [-1, -2]}`` -> ``--max-steps 40 --attention-layers -1 -2``."""
    out: list[str] = []
    for key, value in settings.items():
        if value is None:
            continue
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out += [name, "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            out += [name, *(str(v) for v in value)]
        else:
            out += [name, str(value)]
    return out


@dataclass
class Plan:
    """Every step of one run, in order, and where the run lives."""

    config: ExperimentConfig
    budget_name: str
    budget: Budget
    seeds: list[int]
    root: Path
    steps: list[Step] = field(default_factory=list)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def student_dir(self, variant: str, seed: int) -> Path:
        return self.root / "students" / f"{variant}-s{seed}"

    @property
    def main_student(self) -> Path:
        """The main variant's first seed: the student that is indexed, served and carded."""
        return self.student_dir(self.config.main_variant, self.seeds[0]) / "model"


def shares_first_iteration(overrides: dict[str, Any], main: dict[str, Any]) -> bool:
    """Whether a variant's distillation mines and annotates iteration 1 as the main variant's
    does, so it can take them (``--first-iteration-from``): the two agree on every setting of
    :data:`training.distill.FIRST_ITERATION_FIELDS` (attention settings too, which only matter
    with word-level KD; comparing them always is merely cautious)."""
    from training.distill import FIRST_ITERATION_ATTENTION_FIELDS, FIRST_ITERATION_FIELDS

    return all(overrides.get(k) == main.get(k) for k in (*FIRST_ITERATION_FIELDS, *FIRST_ITERATION_ATTENTION_FIELDS))


def distill_setting(budget: Budget, overrides: dict[str, Any], name: str) -> Any:
    """A distillation setting of a variant: its override, the budget's, else the preset's (else ``None``)."""
    for source in (overrides, budget.distill.overrides):
        if name in source:
            return source[name]
    preset = Path(__file__).resolve().parents[1] / "training" / "configs" / f"{budget.distill.preset}.json"
    return json.loads(preset.read_text()).get(name) if preset.is_file() else None


def selected_index(run_dir: Path) -> Path:
    """The Flat index a finished distillation run built of the student it selected."""
    report = json.loads((run_dir / "report.json").read_text())
    if report.get("selected_index"):  # the base index when the base student (iteration 0) was kept
        return Path(report["selected_index"])
    return run_dir / "indexes" / f"s{report['selected_iteration']}"


def build_plan(config: ExperimentConfig, budget_name: str, budget: Budget, seeds: list[int], root: Path) -> Plan:
    """The steps of ``config`` under ``budget`` (see the module docstring for the order)."""
    plan = Plan(config, budget_name, budget, seeds, root)
    steps = plan.steps
    threads = ["--threads", str(budget.threads)] if budget.threads else []
    quiet = ["--no-progress"]
    train, ev = config.train, config.eval
    eval_args = ["--dataset", str(ev.path()), "--split", ev.split, "--relevance-level", str(ev.relevance_level)]
    if ev.unseen_from:
        eval_args += ["--unseen-from", ev.unseen_from]
    base_index = root / "indexes" / "base"
    base_eval_index = base_index if config.same_corpus() else root / "indexes" / "base-eval"

    def fixed(args: list[str]) -> Callable[[], list[str]]:
        return lambda: list(args)

    steps.append(Step("bm25", "md2pr-evaluate", fixed([*eval_args, "--depth", str(ev.depth), "--retriever", "bm25",
                                                        "--output", str(root / "eval" / "bm25.json"), *threads]),
                      outputs=(root / "eval" / "bm25.json",), group="baselines"))
    index_common = ["--encoder", config.student, "--if-missing", *quiet, *threads]
    steps.append(Step("base-index", "md2pr-build-index",
                      fixed(["--corpus", str(train.path()), "--index-root", str(base_index), *index_common]),
                      outputs=(base_index,), group="baselines"))
    base_needs: tuple[str, ...] = ("base-index",)
    if not config.same_corpus():
        steps.append(Step("base-eval-index", "md2pr-build-index",
                          fixed(["--corpus", str(ev.path()), "--index-root", str(base_eval_index), *index_common]),
                          outputs=(base_eval_index,), group="baselines"))
        base_needs = ("base-eval-index",)
    steps.append(Step("base", "md2pr-evaluate",
                      fixed([*eval_args, "--depth", str(ev.depth), "--retriever", "dense", "--index", str(base_eval_index),
                             "--output", str(root / "eval" / "base.json"), *threads]),
                      needs=base_needs, outputs=(root / "eval" / "base.json",), group="baselines"))

    mining_file = root / "mining" / "train.jsonl"
    steps.append(Step("mine", "md2pr-mine",
                      fixed(["--dataset", str(train.path()), "--split", train.split, "--index", str(base_index),
                             "--depth", str(config.mining_depth), "--relevance-level", str(train.relevance_level), "--output", str(mining_file), *quiet, *threads]),
                      needs=("base-index",), outputs=(mining_file,), group="teacher"))
    teacher_dir = root / "teacher"
    teacher = teacher_dir / "model"
    steps.append(Step("teacher", "md2pr-train-teacher",
                      fixed(["--training-file", str(mining_file), "--output-dir", str(teacher_dir),
                             "--preset", budget.teacher.preset, *flags(budget.teacher.overrides), *quiet, *threads]),
                      needs=("mine",), outputs=(teacher_dir,),
                      resume=lambda: (teacher_dir / "checkpoint" / "trainer_state.pt").is_file(), group="teacher"))

    rerank_args = [*eval_args, "--depth", str(ev.depth), "--rerank", str(teacher), "--rerank-depth", str(config.rerank_depth),
                   "--rerank-first-stage", "bm25", "--rerank-first-stage", "dense", "--index", str(base_eval_index)]
    for name in config.first_stage_runs:
        rerank_args += ["--rerank-first-stage", "run", "--first-stage-run", str(config.run_path(name))]
    rerank_args += ["--score-cache", str(root / "eval" / "rerank.scores.jsonl"), "--output", str(root / "eval" / "rerank.json"), *threads]
    rerank = Step("rerank", "md2pr-evaluate", fixed(rerank_args), needs=("teacher", *base_needs),
                  outputs=(root / "eval" / "rerank.json", root / "eval" / "rerank.scores.jsonl"), group="teacher")

    def distill_step(variant: str, seed: int, overrides: dict[str, Any], share_from: tuple[str, int] | None) -> Step:
        out = plan.student_dir(variant, seed)
        args = ["--preset", budget.distill.preset, "--dataset", str(train.path()), "--split", train.split,
                "--relevance-level", str(train.relevance_level),
                "--teacher", str(teacher), "--student", config.student, "--base-index", str(base_index),
                "--output-dir", str(out), "--seed", str(seed),
                *flags({**budget.distill.overrides, **overrides}), *quiet, *threads]
        needs: tuple[str, ...] = ("teacher", "base-index")
        if share_from is not None:
            args += ["--first-iteration-from", str(plan.student_dir(*share_from))]
            needs += (f"distill:{share_from[0]}-s{share_from[1]}",)
        return Step(f"distill:{variant}-s{seed}", "md2pr-distill", fixed(args), needs=needs, outputs=(out,),
                    resume=lambda: (out / "state.json").is_file(), group="students")

    def eval_steps(variant: str, seed: int) -> list[Step]:
        run_dir = plan.student_dir(variant, seed)
        tag = f"{variant}-s{seed}"
        out = root / "eval" / f"{tag}.json"
        if distill_setting(budget, config.variants[variant], "train_tower") == "query":
            # a query-tower student searches the base encoder's index (its pairing.json names it)
            return [Step(f"eval:{tag}", "md2pr-evaluate",
                         fixed([*eval_args, "--depth", str(ev.depth), "--retriever", "dense", "--index", str(base_eval_index),
                                "--query-encoder", str(run_dir / "model"), "--output", str(out), *threads]),
                         needs=(f"distill:{tag}", *base_needs), outputs=(out,), group="students")]
        if config.same_corpus():
            return [Step(f"eval:{tag}", "md2pr-evaluate",
                         lambda: [*eval_args, "--depth", str(ev.depth), "--retriever", "dense",
                                  "--index", str(selected_index(run_dir)), "--output", str(out), *threads],
                         needs=(f"distill:{tag}",), outputs=(out,), group="students")]
        index = root / "indexes" / tag
        return [
            Step(f"index:{tag}", "md2pr-build-index",
                 fixed(["--corpus", str(ev.path()), "--index-root", str(index), "--encoder", str(run_dir / "model"),
                        "--no-bm25", *quiet, *threads]),
                 needs=(f"distill:{tag}",), outputs=(index,), group="students"),
            Step(f"eval:{tag}", "md2pr-evaluate",
                 fixed([*eval_args, "--depth", str(ev.depth), "--retriever", "dense", "--index", str(index),
                        "--output", str(out), *threads]),
                 needs=(f"index:{tag}",), outputs=(out,), group="students"),
        ]

    main, first = config.main_variant, seeds[0]
    others = [v for v in config.variants if v != main]
    # 1. the main student, indexed, served and carded
    steps.append(distill_step(main, first, config.variants[main], None))
    steps += eval_steps(main, first)
    student_index = root / "indexes" / "student"
    served_needs: tuple[str, ...] = ("student-index", f"eval:{main}-s{first}")
    if distill_setting(budget, config.variants[main], "train_tower") == "query":
        # a query-tower student answers queries over the base encoder's passage vectors: the published
        # index is the base encoder's, paired with the student (md2pr-index pair; a hot swap when served)
        steps.append(Step("student-index", "md2pr-build-index",
                          fixed(["--corpus", str(ev.path()), "--index-root", str(student_index), "--encoder",
                                 config.student, *quiet, *threads]),
                          needs=(f"distill:{main}-s{first}",), outputs=(student_index,), group="served"))
        steps.append(Step("student-pair", "md2pr-index",
                          fixed(["pair", "--index-root", str(student_index), "--query-encoder", str(plan.main_student)]),
                          needs=("student-index", f"distill:{main}-s{first}"), group="served"))
        served_needs = ("student-pair", f"eval:{main}-s{first}")
    else:
        steps.append(Step("student-index", "md2pr-build-index",
                          fixed(["--corpus", str(ev.path()), "--index-root", str(student_index), "--encoder",
                                 str(plan.main_student), *quiet, *threads]),
                          needs=(f"distill:{main}-s{first}",), outputs=(student_index,), group="served"))
    served_args = [*eval_args, "--retriever", "service", "--depth", str(min(ev.depth, 100)),
                   "--output", str(root / "eval" / "served.json")]
    steps.append(Step("served", "served", fixed([str(student_index), *served_args]), needs=served_needs,
                      outputs=(root / "eval" / "served.json", root / "eval" / "served-check.json"), group="served"))
    steps.append(Step("model-card", "model-card", fixed([str(plan.main_student)]), needs=(f"eval:{main}-s{first}",),
                      outputs=(plan.main_student / "MODEL_CARD.md",), group="served", cached=False))
    # 2. the teacher's ceiling, the filter check, the ablations, more seeds
    steps.append(rerank)
    if config.filter_check:
        steps.append(distill_step("filter-check", first, {**config.variants[main], **config.filter_check}, None))
    # Iteration 1's mining and annotation depend on the base student, the teacher and the mining
    # settings only, not on the seed (it orders the batches): every later run shares the first's,
    # unless its variant mines otherwise (unlabelled queries, another depth), then its own first seed's.
    def share_from(variant: str, seed: int) -> tuple[str, int] | None:
        owner = main if shares_first_iteration(config.variants[variant], config.variants[main]) else variant
        return None if (owner, seed) == (variant, first) else (owner, first)

    for variant in others:
        steps.append(distill_step(variant, first, config.variants[variant], share_from(variant, first)))
        steps += eval_steps(variant, first)
    for seed in seeds[1:]:
        for variant in (main, *others):
            steps.append(distill_step(variant, seed, config.variants[variant], share_from(variant, seed)))
            steps += eval_steps(variant, seed)
    steps.append(Step("report", "report", fixed([]), group="report", cached=False))
    return plan
