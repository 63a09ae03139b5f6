"""Checkpoint save/resume shared by the teacher's and the distillation's training loops.

A checkpoint directory holds the model (``save_pretrained``) and one ``torch.save`` file with
the trainer state: at least ``optimizer``, ``scheduler`` (their ``state_dict()``), ``torch_rng``
(``torch.get_rng_state()``) and ``cuda_rng`` (``None`` without CUDA), plus whatever the loop
needs (its step, best dev figure, iteration). It is written beside its final place and renamed
over the old one, so a kill leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from retrieval.jsonio import read_jsonl, write_json_atomic, write_text_atomic


class Saveable(Protocol):
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None: ...


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place, replacing an older one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def adamw_with_warmup(params: Any, lr: float, weight_decay: float, warmup: float, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over ``params`` (parameters, or groups with their own ``lr``/``weight_decay``) and a
    linear schedule: warm-up over the first ``warmup`` fraction of ``total_steps``, then decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(warmup * total_steps), total_steps)


def rng_state() -> dict[str, Any]:
    """The RNG states a resumed loop restores (``torch_rng``, ``cuda_rng``)."""
    return {"torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def optimization_state(optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Optimizer, scheduler and RNG states: the part of a trainer state every loop saves."""
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng_state()}


def save_checkpoint(
    checkpoint: Path, model: Saveable, state: dict[str, Any], state_file: str,
    extra_json: dict[str, Any] | None = None,
) -> None:
    """Write ``checkpoint/`` atomically: the model, ``state_file`` (``torch.save(state)``) and each
    ``extra_json`` file (name -> JSON value), in a temporary directory renamed over the old one."""
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(state, tmp / state_file)
    for name, value in (extra_json or {}).items():
        write_json_atomic(tmp / name, value)
    replace_dir(tmp, checkpoint)


def load_checkpoint(
    checkpoint: Path, state_file: str, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
) -> dict[str, Any]:
    """Read a checkpoint's trainer state; restore the optimizer and scheduler (when given) and the
    RNG states from it. Returns the whole saved state."""
    saved: dict[str, Any] = torch.load(checkpoint / state_file, weights_only=False, map_location="cpu")
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return saved


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep the lines of a JSON-lines log for which ``keep(entry)`` holds (a resumed loop rewrites the rest)."""
    if not path.is_file():
        return
    kept = [entry for entry in read_jsonl(path) if keep(entry)]  # a line cut by a kill is dropped
    write_text_atomic(path, "".join(json.dumps(entry) + "\n" for entry in kept))
