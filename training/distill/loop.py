"""What the two train loops (both towers: :mod:`training.distill.train_phase`; the query tower:
:mod:`training.distill.query_phase`) share: opening iteration ``t``'s student with its optimizer
(from the checkpoint when one is there), one optimizer step, the loss log (cut back on resume, a
line a step) and the final losses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.encoder import DualEncoder
from retrieval.jsonio import read_jsonl

from ..checkpoint import adamw_with_warmup, load_checkpoint, truncate_jsonl
from ..errors import TrainingError
from .config import TRAINER_STATE_FILE, DistillConfig


@dataclass
class OpenStudent:
    """Iteration ``t``'s student, the view of it that trains (shorter inputs), its optimizer and
    schedule, and the checkpoint's saved trainer state (``None`` on a fresh start)."""

    student: DualEncoder
    view: DualEncoder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    saved: dict[str, Any] | None


def open_student(config: DistillConfig, t: int, checkpoint: Path, start_dir: Path | str, total_steps: int,
                 lengths: dict[str, int | None]) -> OpenStudent:
    """The student iteration ``t`` trains: the checkpoint's when ``checkpoint`` holds a trainer
    state (optimizer, schedule and RNG restored from it; it must be of iteration ``t``), else the one
    in ``start_dir`` with the RNG seeded for ``t``. ``lengths`` caps the training view's input
    lengths (``{"max_query_length": 32}``; a ``None`` leaves that length as the model has it)."""
    resumed = (checkpoint / TRAINER_STATE_FILE).is_file()
    student = DualEncoder.from_pretrained(checkpoint if resumed else start_dir, device=config.device)
    view = student
    update = {name: value for name, value in lengths.items() if value}
    if update:
        view = DualEncoder(student.model, student.tokenizer, student.config.model_copy(update=update), student.source)
    optimizer, scheduler = adamw_with_warmup(student.model.parameters(), config.lr, config.weight_decay, config.warmup, total_steps)
    saved = None
    if resumed:
        saved = load_checkpoint(checkpoint, TRAINER_STATE_FILE, optimizer, scheduler)
        if saved["iteration"] != t:
            raise TrainingError(f"{checkpoint}: a checkpoint of iteration {saved['iteration']}, not {t}")
    else:
        torch.manual_seed(config.seed * 1_000 + t)
    return OpenStudent(student, view, optimizer, scheduler, saved)


def optimizer_step(opened: OpenStudent, max_grad_norm: float) -> None:
    """Clip the accumulated gradients (when ``max_grad_norm > 0``), step, advance the schedule, clear."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(opened.student.model.parameters(), max_grad_norm)
    opened.optimizer.step()
    opened.scheduler.step()
    opened.optimizer.zero_grad(set_to_none=True)


def truncate_log(path: Path, iteration: int, step: int) -> None:
    """Keep the log lines of earlier iterations and of this one up to ``step`` (a resumed run rewrites the rest)."""
    truncate_jsonl(path, lambda e: e["iteration"] < iteration or (e["iteration"] == iteration and e["step"] <= step))


def append_log(path: Path, line: dict[str, Any]) -> None:
    """One line of ``log.jsonl``."""
    with path.open("a") as log:
        log.write(json.dumps(line) + "\n")


def final_losses(path: Path, t: int, names: tuple[str, ...]) -> dict[str, float]:
    """Mean of each logged loss term over the last fifth of iteration ``t``'s steps in ``path``."""
    steps = [x for x in read_jsonl(path) if x["iteration"] == t]
    tail = steps[-max(1, len(steps) // 5):]
    return {k: round(float(np.mean([x[k] for x in tail if k in x])), 5) for k in names if any(k in x for x in tail)}
