"""The trainer's train phase: one loop of optimizer steps over the planned micro-batches, with
gradient accumulation, checkpoints every ``save_every`` steps and exact resume."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.cross_encoder import CrossEncoder
from retrieval.encoder import DualEncoder

from ..annotate import load_attention
from ..checkpoint import optimization_state, replace_dir, save_checkpoint
from ..errors import TrainingError
from ..losses import MD2PRLoss
from .bank import kd_list
from .batches import Group, batch_targets, plan_epoch, step_schedule, word_inputs
from .config import CHECKPOINT_CONFIG_FILE, TRAINER_STATE_FILE, DistillConfig
from .loop import append_log, final_losses, open_student, optimizer_step, truncate_log

logger = logging.getLogger(__name__)


class TrainPhase:
    """The :class:`training.distill.trainer.Distiller` methods of phase 4 (a mixin)."""

    config: DistillConfig
    out: Path
    show_progress: bool
    _steps_left: int | None

    def _train(self, t: int) -> bool:
        """Train S_t; returns False when ``stop_after`` ended this process's work first."""
        config = self.config
        header, records, queries = self._training_set(t)
        views = {q.query_id: q for q in queries}
        teacher = {(r.query_id, docid): score for r in records for docid, score in kd_list(r, config.kd_score)}
        attention: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if config.word_weight > 0 and header.teacher and header.teacher.get("attention"):
            # this run's own maps, where annotation put them: the header names the directory it was
            # written to, which for an iteration 1 taken from first_iteration_from is the other run's
            attention_dir = self.iter_dir(t) / "attention"
            for i, record in enumerate(records):
                path = attention_dir / f"{i:06d}.npz"
                if path.is_file():
                    for docid, value in load_attention(path).items():
                        attention[(record.query_id, docid)] = value
        online = None
        if config.kd_in_batch and config.sentence_weight > 0:
            if (header.teacher or {}).get("score") != "cross_encoder":
                raise TrainingError("kd_in_batch scores in-batch pairs with the cross-encoder alone: use it with --teacher-fusion false")
            online = CrossEncoder.from_pretrained(config.teacher, device=config.device)

        batches_per_epoch, total_micro, total_steps = step_schedule(queries, config, t)
        checkpoint = self.iter_dir(t) / "checkpoint"
        opened = open_student(config, t, checkpoint, self.student_dir(t - 1), total_steps,
                              {"max_passage_length": config.train_passage_length})
        student, view, optimizer, scheduler = opened.student, opened.view, opened.optimizer, opened.scheduler
        step = 0
        if opened.saved is not None:
            step = opened.saved["step"]
            logger.info("iteration %d: resuming training at step %d of %d", t, step, total_steps)
        truncate_log(self.out / "log.jsonl", t, step)
        loss_fn = MD2PRLoss(
            config.contrastive_weight, config.sentence_weight, config.word_weight, config.tau,
            config.kd_teacher_temperature, config.kd_student_temperature, config.word_temperature, config.word_normalize,
            config.kd_loss,
        )
        logger.info(
            "iteration %d: %d training queries (%d with cached attention pairs), %d micro-batches of %d x (1 + %d) a epoch, %d steps",
            t, len(queries), len({q for q, _ in attention}), batches_per_epoch, config.queries_per_batch, config.negatives, total_steps,
        )
        plans: dict[int, list[list[Group]]] = {}
        started = time.monotonic()
        start_step = step
        stop_at = total_steps if self._steps_left is None else min(total_steps, step + self._steps_left)
        progress = tqdm(total=total_steps, initial=step, desc=f"distill iteration {t}", unit="step", disable=not self.show_progress)
        student.model.train()
        while step < stop_at:
            first = step * config.accumulation_steps
            micro = range(first, min(first + config.accumulation_steps, total_micro))
            sums: dict[str, float] = {}
            n_word = 0
            for m in micro:
                epoch, index = divmod(m, batches_per_epoch)
                groups = plans.setdefault(epoch, plan_epoch(queries, config, t, epoch))[index]
                out, pairs = self._micro_step(view, groups, views, teacher, attention, online, loss_fn)
                (out.total / len(micro)).backward()
                for name, value in out.as_floats().items():
                    sums[name] = sums.get(name, 0.0) + value / len(micro)
                n_word += pairs
            optimizer_step(opened, config.max_grad_norm)
            step += 1
            append_log(self.out / "log.jsonl", {
                "iteration": t, "step": step, "epoch": (first // batches_per_epoch),
                **{k: round(v, 5) for k, v in sums.items()}, "word_pairs": n_word,
                "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 2)})
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss']:.3f}")
            if step % config.save_every == 0 or step == stop_at:
                self._checkpoint(student, checkpoint, t, step, optimizer, scheduler)
        progress.close()
        if self._steps_left is not None:
            self._steps_left -= step - start_step
        if step < total_steps:
            return False
        student.model.eval()
        tmp = self.iter_dir(t) / "student.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(tmp)
        replace_dir(tmp, self.iter_dir(t) / "student")
        shutil.rmtree(checkpoint, ignore_errors=True)
        self._record(t, "train", {
            "steps": total_steps, "queries": len(queries),
            "final_losses": final_losses(self.out / "log.jsonl", t, ("loss", "contrastive", "sentence_kd", "word_kd")),
        }, time.monotonic() - started)
        return True

    def _micro_step(self, student, groups, views, teacher, attention, online, loss_fn):
        """Forward one micro-batch; returns the loss output and the number of word-level pairs."""
        targets = batch_targets(groups, views, teacher, attention.keys(), online, self.passages if online else None)
        word = self.config.word_weight > 0 and bool(targets.word_pairs)
        device = student.model.device
        q_batch = student.tokenize([g.query for g in groups], "query", return_offsets=word)
        p_batch = student.tokenize([self.passages[d] for d in targets.columns], "passage", return_offsets=word)
        q_emb, q_states = student.forward(q_batch)  # [queries, dim], [queries, q_len, hidden]
        p_emb, p_states = student.forward(p_batch)  # [columns, dim], [columns, p_len, hidden]
        similarity = q_emb @ p_emb.T  # [queries, columns]
        inputs = None
        if word:
            inputs = word_inputs(targets.word_pairs, groups, targets.columns, attention,
                                 q_batch["offset_mapping"], p_batch["offset_mapping"], q_states, p_states)
        out = loss_fn(
            similarity,
            targets.positive_mask.to(device),
            targets.valid_mask.to(device),
            targets.kd_index.to(device),
            targets.kd_teacher.to(device),
            targets.kd_mask.to(device),
            inputs,
        )
        return out, len(targets.word_pairs) if word else 0

    def _checkpoint(self, student: DualEncoder, checkpoint: Path, t: int, step: int, optimizer, scheduler) -> None:
        """Write the checkpoint directory atomically (a temp directory renamed over the old one)."""
        save_checkpoint(checkpoint, student, {"iteration": t, "step": step, **optimization_state(optimizer, scheduler)},
                        TRAINER_STATE_FILE, {CHECKPOINT_CONFIG_FILE: self._config_record()})

