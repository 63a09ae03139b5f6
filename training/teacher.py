"""``md2pr-train-teacher``: fine-tune a cross-encoder teacher on a mined training file.

Example (the CPU configuration; see ``PRESETS``)::

    md2pr-train-teacher --training-file artifacts/teacher/scifact-train.jsonl \\
        --output-dir artifacts/teacher/minilm-cpu --preset cpu

Training: listwise softmax cross-entropy over groups of one labelled positive and
``negatives`` mined negatives (sampled anew each epoch from the candidates whose best
first-stage rank is within ``negative_depth``), ``groups_per_step`` groups a step, AdamW with
linear warm-up and decay, the new head at its own (larger) learning rate. Queries of the held-out
dev subset (:func:`retrieval.datasets.in_dev_subset`) are never trained on: after each epoch the
model reranks their first-stage candidates (best rank within ``dev_depth``) and the best epoch by
dev nDCG@10 is kept. Finally the fusion weights of the fused teacher score
(:func:`retrieval.cross_encoder.teacher_scores`) are fitted on the same dev candidates and
recorded in the saved model's ``cross_encoder_config.json``.

Output directory::

    config.json       the training configuration (and the training file's header)
    loss.jsonl        one line per step: {"step", "epoch", "loss", "lr", "seconds"}
    dev.jsonl         one line per dev evaluation: {"step", "epoch", "metrics": {...}}
    checkpoint/       the latest state: model + trainer_state.pt (optimizer, scheduler, RNG, step)
    model/            the best model on dev (a CrossEncoder directory; the teacher)
    report.json       summary: best epoch, dev metrics of cross-encoder / first stage / fused, fusion

``--resume`` continues from ``checkpoint/`` at the step it was saved (the group order of an
epoch is a function of the seed and the epoch, so the run continues exactly where it stopped).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from retrieval.cross_encoder import CrossEncoder, HeadKind, TeacherFusion, update_config
from retrieval.datasets import in_dev_subset, iter_corpus
from retrieval.fusion import FusionConfig, fit_weights, fuse
from retrieval.jsonio import read_json_object, write_json_atomic
from retrieval.metrics import evaluate_run
from retrieval.runtime import run_job
from retrieval.types import Qrels, Run

from .checkpoint import adamw_with_warmup, load_checkpoint, replace_dir, optimization_state, save_checkpoint, truncate_jsonl
from .data import TrainingHeader, TrainingRecord, load_training_file
from .errors import TrainingError, check_settings

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class TeacherTrainConfig:
    """Every setting of a teacher training run (saved in ``config.json``)."""

    backbone: str = "builtin:all-MiniLM-L6-v2"
    head: HeadKind = "mean"
    max_length: int = 128  # tokens of [CLS] query [SEP] passage [SEP]: a SciFact claim and the abstract's start
    negatives: int = 7  # per group, with one positive
    groups_per_step: int = 4
    epochs: int = 2
    max_steps: int | None = None  # stop early (smoke tests, budgets)
    lr: float = 1e-4  # the transformer
    head_lr: float = 2e-3  # the new head: at the transformer's rate it sat at chance for hundreds of steps
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the steps
    negative_depth: int = 30  # sample negatives among candidates ranked within this by some source
    # of the ``negatives``, how many are other training queries' positives (drawn at random): a
    # passage otherwise seen only as a positive teaches the model that it is relevant to anything
    prior_negatives: int = 0
    dev_depth: int = 10  # dev reranks candidates ranked within this by some source (cost: ~16 pairs a query)
    eval_every_epochs: int = 1
    save_every: int = 25  # steps between checkpoints
    fit_fusion: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "max_length": self.max_length >= 16,
            "negatives": self.negatives >= 1,
            "groups_per_step": self.groups_per_step >= 1,
            "epochs": self.epochs >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "lr": self.lr > 0,
            "head_lr": self.head_lr > 0,
            "warmup": 0 <= self.warmup < 1,
            "negative_depth": self.negative_depth >= 1,
            "prior_negatives": 0 <= self.prior_negatives <= self.negatives,
            "dev_depth": self.dev_depth >= 1,
            "save_every": self.save_every >= 1,
        }
        check_settings("teacher", self, checks)
        if self.head not in ("mean", "pooler"):
            raise TrainingError(f"head must be 'mean' or 'pooler', not {self.head!r}")


#: Two documented configurations. ``cpu``: all-MiniLM-L6-v2 on 2 cores, 2 epochs of ~185 steps of
#: 4 x 8 pairs at 128 tokens on SciFact train (fit part). ``gpu``: a bigger backbone (pass
#: ``--backbone`` with e.g. all-mpnet-base-v2), longer inputs, more negatives and epochs.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "max_length": 256,
        "negatives": 15,
        "groups_per_step": 16,
        "epochs": 4,
        "lr": 3e-5,
        "head_lr": 1e-3,
        "negative_depth": 50,
        "save_every": 100,
        "device": "cuda",
    },
}


# ------------------------------------------------------------------------------------ the data
@dataclass(frozen=True)
class Group:
    """One training group: a query, its positive and ``negatives`` negatives (docids)."""

    query: str
    positive: str
    negatives: tuple[str, ...]


def split_records(records: list[TrainingRecord]) -> tuple[list[TrainingRecord], list[TrainingRecord]]:
    """``(fit, dev)`` by :func:`retrieval.datasets.in_dev_subset` of the query id."""
    fit = [r for r in records if not in_dev_subset(r.query_id)]
    dev = [r for r in records if in_dev_subset(r.query_id)]
    return fit, dev


def epoch_groups(records: list[TrainingRecord], config: TeacherTrainConfig, epoch: int) -> list[Group]:
    """The groups of one epoch, in training order: one per (query, positive) with mined negatives.

    A pure function of the records, the config's seed and ``epoch`` (so a resumed run sees
    the same groups). Negatives are drawn without replacement from the candidates ranked
    within ``negative_depth`` by some source (with replacement if there are too few); a query
    without such negatives is skipped. With ``prior_negatives`` = k, k of them are instead
    positives of other records (never one of this query's positives), drawn the same way; every
    group has ``negatives`` negatives.
    """
    rng = random.Random(config.seed * 100_003 + epoch)
    all_positives = sorted({p.docid for r in records for p in r.positives if p.relevance > 0})
    groups: list[Group] = []
    for record in records:
        pool = [c.docid for c in record.negatives if c.best_rank is not None and c.best_rank <= config.negative_depth]
        if not pool:
            continue
        own = {p.docid for p in record.positives}
        others = [d for d in all_positives if d not in own] if config.prior_negatives else []
        prior = config.prior_negatives if others else 0  # none to draw: every negative is mined
        for positive in record.positives:
            if positive.relevance <= 0:
                continue
            chosen = _draw(rng, pool, config.negatives - prior) + _draw(rng, others, prior)
            groups.append(Group(record.query, positive.docid, tuple(chosen)))
    rng.shuffle(groups)
    return groups


def _draw(rng: random.Random, items: list[str], k: int) -> list[str]:
    """``k`` of ``items``: without replacement when there are enough, else with replacement."""
    if len(items) >= k:
        return rng.sample(items, k)
    return [rng.choice(items) for _ in range(k)]


def listwise_loss(scores: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy with the positive in column 0: ``scores [groups, 1 + negatives]``."""
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return torch.nn.functional.cross_entropy(scores, target)


def train_step(
    model: CrossEncoder, groups: list[Group], passages: dict[str, str], optimizer, scheduler
) -> float:
    """One optimisation step on ``groups``; returns the loss."""
    model.model.train()
    queries = [g.query for g in groups for _ in range(1 + len(g.negatives))]
    texts = [passages[d] for g in groups for d in (g.positive, *g.negatives)]
    batch = model.tokenize(queries, texts)
    scores = model.forward(batch).view(len(groups), -1)  # [groups, 1 + negatives]
    loss = listwise_loss(scores)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ----------------------------------------------------------------------------------- dev metrics
def dev_candidates(records: list[TrainingRecord], depth: int) -> dict[str, list]:
    """Per dev query, the candidates some source ranked within ``depth`` (what a reranker sees)."""
    return {
        r.query_id: [c for c in r.candidates() if c.best_rank is not None and c.best_rank <= depth] for r in records
    }


def records_qrels(records: list[TrainingRecord]) -> Qrels:
    """Judgements of the records: every positive (retrieved or not) with its relevance."""
    return {r.query_id: {c.docid: c.relevance for c in r.positives} for r in records}


def score_dev(model: CrossEncoder, records: list[TrainingRecord], passages: dict[str, str], depth: int) -> Run:
    """Cross-encoder scores of the dev candidates: a run ``{query_id: {docid: score}}``."""
    candidates = dev_candidates(records, depth)
    pairs = [(r.query_id, r.query, c.docid) for r in records for c in candidates[r.query_id]]
    scores = model.score([q for _, q, _ in pairs], [passages[d] for _, _, d in pairs]) if pairs else []
    run: Run = {r.query_id: {} for r in records}
    for (qid, _, docid), score in zip(pairs, scores):
        run[qid][docid] = float(score)
    return run


def fit_teacher_fusion(
    records: list[TrainingRecord], ce_run: Run, depth: int, header: TrainingHeader
) -> tuple[TeacherFusion, dict[str, dict[str, float]]]:
    """Fit the fused teacher's weights on dev candidates; returns the fusion and dev metrics.

    Two grid searches with :func:`retrieval.fusion.fit_weights`, mirroring the two steps of
    :func:`retrieval.cross_encoder.teacher_scores`: the dense/BM25 balance of the first stage,
    then the cross-encoder / first-stage balance.
    """
    if "bm25" not in header.sources or "dense" not in header.sources:
        raise TrainingError("fitting a fused teacher needs a training file mined from both BM25 and a dense index")
    qrels = records_qrels(records)
    candidates = dev_candidates(records, depth)

    def ranking(values: dict[str, float | None]) -> list[tuple[str, float]]:
        return sorted(((d, s) for d, s in values.items() if s is not None), key=lambda h: (-h[1], h[0]))

    dense = {q: ranking({c.docid: c.scores.get("dense") for c in cands}) for q, cands in candidates.items()}
    bm25 = {q: ranking({c.docid: c.scores.get("bm25") for c in cands}) for q, cands in candidates.items()}
    base = FusionConfig(dense_depth=1000, bm25_depth=1000)
    first_fit = fit_weights(qrels, dense, bm25, base)
    first = {
        q: [(h.docid, h.score) for h in fuse(dense[q], bm25[q], first_fit.best, 1000)] for q in candidates
    }
    ce = {q: ranking(ce_run.get(q, {})) for q in candidates}
    teacher_fit = fit_weights(qrels, ce, first, base)
    fused = {q: {h.docid: h.score for h in fuse(ce[q], first[q], teacher_fit.best, 1000)} for q in candidates}
    measures = ("nDCG@10", "MRR@10")
    metrics = {
        "cross_encoder": _metrics(qrels, {q: dict(h) for q, h in ce.items()}, measures),
        "bm25": _metrics(qrels, {q: dict(h) for q, h in bm25.items()}, measures),
        "dense": _metrics(qrels, {q: dict(h) for q, h in dense.items()}, measures),
        "first_stage_fused": _metrics(qrels, {q: dict(h) for q, h in first.items()}, measures),
        "teacher_fused": _metrics(qrels, fused, measures),
    }
    dense_info = header.sources["dense"]
    fusion = TeacherFusion(
        cross_encoder_weight=teacher_fit.best.dense_weight,
        first_stage_weight=teacher_fit.best.bm25_weight,
        dense_weight=first_fit.best.dense_weight,
        bm25_weight=first_fit.best.bm25_weight,
        dense_encoder=str(dense_info.get("encoder", "")),
        dense_encoder_fingerprint=str(dense_info.get("fingerprint", "")),
        bm25=header.sources["bm25"],
        fitted_on=f"{header.dataset} {header.split}:dev (candidates within rank {depth})",
        objective=metrics["teacher_fused"],
    )
    return fusion, metrics


def _metrics(qrels: Qrels, run: Run, names: tuple[str, ...]) -> dict[str, float]:
    from retrieval.metrics import DEFAULT_MEASURES

    return evaluate_run(qrels, run, {n: DEFAULT_MEASURES[n] for n in names})


# --------------------------------------------------------------------------------- the trainer
def load_passages(dataset: str, needed: set[str]) -> dict[str, str]:
    """Passage texts (:attr:`Passage.full_text`) of the needed docids, streamed from the corpus."""
    passages = {p.docid: p.full_text for p in iter_corpus(Path(dataset)) if p.docid in needed}
    missing = needed - passages.keys()
    if missing:
        raise TrainingError(f"{len(missing)} docids of the training file are not in the corpus {dataset} (e.g. {min(missing)!r})")
    return passages


def _make_optimizer(model: CrossEncoder, config: TeacherTrainConfig, total_steps: int):
    head = {id(p) for p in model.head_parameters()}
    body = [p for p in model.model.parameters() if id(p) not in head]
    groups = [
        {"params": body, "lr": config.lr, "weight_decay": config.weight_decay},
        {"params": model.head_parameters(), "lr": config.head_lr, "weight_decay": 0.0},
    ]
    return adamw_with_warmup(groups, config.lr, config.weight_decay, config.warmup, total_steps)


def _save_checkpoint(out_dir: Path, model: CrossEncoder, state: dict[str, Any]) -> None:
    """Write ``checkpoint/`` atomically (:func:`training.checkpoint.save_checkpoint`)."""
    save_checkpoint(out_dir / "checkpoint", model, state, STATE_FILE)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` whose step is at most ``last_step`` (a resumed run rewrites the rest)."""
    truncate_jsonl(path, lambda entry: entry["step"] <= last_step)


def train_teacher(
    training_file: Path,
    out_dir: Path,
    config: TeacherTrainConfig,
    resume: bool = False,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a teacher training; returns the report (also written to ``report.json``).

    ``stop_after`` ends this process's work after that many steps (with a checkpoint), as a
    kill would, without changing the schedule; the report then says ``"finished": false``.
    """
    header, records = load_training_file(training_file)
    fit, dev = split_records(records)
    if not fit:
        raise TrainingError(f"{training_file}: no training queries outside the dev subset")
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "checkpoint"
    if (out_dir / "config.json").exists() and not resume:
        raise TrainingError(f"{out_dir} already holds a training run: pass --resume to continue it, or pick another --output-dir")
    if resume and not (checkpoint / STATE_FILE).is_file():
        raise TrainingError(f"{out_dir}: nothing to resume (no checkpoint/{STATE_FILE})")
    write_json_atomic(out_dir / "config.json",
                      {"teacher": asdict(config), "training_file": str(training_file), "header": header.model_dump()})
    needed = {c.docid for r in records for c in r.candidates()}
    passages = load_passages(header.dataset, needed)

    steps_per_epoch = math.ceil(len(epoch_groups(fit, config, 0)) / config.groups_per_step)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    if resume:
        model = CrossEncoder.from_pretrained(checkpoint, device=config.device)
    else:
        model = CrossEncoder.from_backbone(config.backbone, config.head, config.max_length, config.device, seed=config.seed)
    optimizer, scheduler = _make_optimizer(model, config, total_steps)
    state: dict[str, Any] = {"step": 0, "best": None, "best_step": None}
    if resume:
        saved = load_checkpoint(checkpoint, STATE_FILE, optimizer, scheduler)
        state = {k: saved[k] for k in ("step", "best", "best_step")}
        logger.info("resuming at step %d of %d", state["step"], total_steps)
    else:
        torch.manual_seed(config.seed)
    _truncate_jsonl(out_dir / "loss.jsonl", state["step"])
    _truncate_jsonl(out_dir / "dev.jsonl", state["step"])
    logger.info(
        "%d training queries, %d dev queries; %d steps per epoch of %d groups x %d pairs; %d steps",
        len(fit), len(dev), steps_per_epoch, config.groups_per_step, 1 + config.negatives, total_steps,
    )

    def checkpoint_state() -> dict[str, Any]:
        return {**state, **optimization_state(optimizer, scheduler)}

    def evaluate_dev(step: int, epoch: int) -> None:
        if not dev:
            return
        started = time.monotonic()
        run = score_dev(model, dev, passages, config.dev_depth)
        metrics = _metrics(records_qrels(dev), run, ("nDCG@10", "MRR@10"))
        with (out_dir / "dev.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "metrics": metrics, "seconds": round(time.monotonic() - started, 1)}) + "\n")
        logger.info("dev after epoch %d (step %d): %s", epoch, step, metrics)
        if state["best"] is None or metrics["nDCG@10"] > state["best"]:
            state["best"], state["best_step"] = metrics["nDCG@10"], step
            tmp = out_dir / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            write_json_atomic(out_dir / "dev_run.json", run)
            replace_dir(tmp, out_dir / "model")

    progress = tqdm(total=total_steps, initial=state["step"], desc="teacher", unit="step", disable=not show_progress)
    groups_cache: dict[int, list[Group]] = {}
    started = time.monotonic()
    stop_at = total_steps if stop_after is None else min(total_steps, state["step"] + stop_after)
    while state["step"] < stop_at:
        step = state["step"]
        epoch, index = divmod(step, steps_per_epoch)
        groups = groups_cache.setdefault(epoch, epoch_groups(fit, config, epoch))
        chunk = groups[index * config.groups_per_step : (index + 1) * config.groups_per_step]
        loss = train_step(model, chunk, passages, optimizer, scheduler)
        state["step"] = step + 1
        with (out_dir / "loss.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {"step": state["step"], "epoch": epoch, "loss": round(loss, 5), "lr": scheduler.get_last_lr()[0],
                     "seconds": round(time.monotonic() - started, 1)}
                )
                + "\n"
            )
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", epoch=epoch)
        end_of_epoch = state["step"] % steps_per_epoch == 0 or state["step"] == total_steps
        if end_of_epoch and ((epoch + 1) % config.eval_every_epochs == 0 or state["step"] == total_steps):
            evaluate_dev(state["step"], epoch)
        if state["step"] % config.save_every == 0 or end_of_epoch or state["step"] == stop_at:
            _save_checkpoint(out_dir, model, checkpoint_state())
    progress.close()
    if state["step"] < total_steps:
        return {"finished": False, "steps": state["step"], "total_steps": total_steps}
    if not dev and not (out_dir / "model").exists():
        model.save_pretrained(out_dir / "model")

    report: dict[str, Any] = {
        "finished": True,
        "training_file": str(training_file),
        "steps": state["step"],
        "best_step": state["best_step"],
        "dev_queries": len(dev),
        "fit_queries": len(fit),
        "config": asdict(config),
    }
    best_dir = out_dir / "model"
    if dev and config.fit_fusion and (out_dir / "dev_run.json").is_file():
        ce_run = read_json_object(out_dir / "dev_run.json", error=TrainingError)
        fusion, metrics = fit_teacher_fusion(dev, ce_run, config.dev_depth, header)
        saved = update_config(best_dir, fusion=fusion.model_dump(), training=report)
        report["dev_metrics"] = metrics
        report["fusion"] = fusion.model_dump()
        logger.info("dev (%d queries): %s", len(dev), json.dumps(metrics))
        logger.info("fused teacher weights: ce %.2f / first stage %.2f (dense %.2f, bm25 %.2f); fingerprint %s",
                    fusion.cross_encoder_weight, fusion.first_stage_weight, fusion.dense_weight, fusion.bm25_weight,
                    saved.fingerprint[:12])
    elif best_dir.exists():
        update_config(best_dir, training=report)
    write_json_atomic(out_dir / "report.json", report)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-train-teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--training-file", type=Path, required=True, help="from md2pr-mine")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="base configuration (default: cpu)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    for field in fields(TeacherTrainConfig):
        name = "--" + field.name.replace("_", "-")
        if field.type in ("bool",):
            parser.add_argument(name, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
        elif field.name == "head":
            parser.add_argument(name, choices=["mean", "pooler"], default=None)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(field.type), str)
            parser.add_argument(name, type=kind, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TeacherTrainConfig:
    """The preset, overridden by every flag given."""
    values = dict(PRESETS[args.preset])
    for field in fields(TeacherTrainConfig):
        given = getattr(args, field.name)
        if given is not None:
            values[field.name] = given
    return TeacherTrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(_threads: int) -> int:
        config = config_from_args(args)
        if args.resume and (args.output_dir / "config.json").is_file():
            saved = read_json_object(args.output_dir / "config.json", error=TrainingError)["teacher"]
            if saved != asdict(config):
                raise TrainingError(f"{args.output_dir}: --resume with settings different from the saved config.json")
        report = train_teacher(args.training_file, args.output_dir, config, resume=args.resume, show_progress=not args.no_progress)
        print(json.dumps({k: report[k] for k in ("steps", "best_step") if k in report} | {"dev": report.get("dev_metrics", {})}, indent=2))
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
