"""Phases 4 and 5 of a query-tower run (``train_tower="query"``): train the query encoder against
the frozen passage bank (:mod:`training.distill.bank`), measure dev after every epoch, and keep
the best epoch, the starting student (epoch 0) included: an iteration never ends on a student
worse on dev than the one it started from.

Per micro-batch of ``queries_per_batch`` queries: the query vectors ``q [queries, dim]`` (with
gradients) times the whole bank ``B [passages, dim]`` gives ``similarity [queries, passages]``;
:class:`training.losses.MD2PRLoss` takes InfoNCE over every bank row (the sampled positive
against all others but the query's other positives and its dropped suspected false negatives)
and sentence-level KD over the query's annotated list (its columns of the same product).

Files of iteration ``t`` beside the two-tower ones: ``iter-<t>/epochs.jsonl`` (one line per
measured epoch: dev, dev_unseen, selection score), ``iter-<t>/best/`` (the best epoch's student
while training). The checkpoint's trainer state carries the epoch measures and the best so far,
so a resumed run selects exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from retrieval.datasets import Dataset
from retrieval.encoder import DualEncoder
from retrieval.jsonio import write_text_atomic

from ..checkpoint import optimization_state, replace_dir, save_checkpoint
from ..losses import MD2PRLoss
from .bank import PassageBank, bank_run, bank_targets, evaluate_on, kd_list, write_pairing
from .batches import plan_epoch, step_schedule
from .config import CHECKPOINT_CONFIG_FILE, TRAINER_STATE_FILE, DistillConfig
from .loop import append_log, final_losses, open_student, optimizer_step, truncate_log
from .selection import selection_score

logger = logging.getLogger(__name__)


class QueryTowerPhase:
    """The :class:`training.distill.trainer.Distiller` methods of a query-tower run (a mixin)."""

    config: DistillConfig
    out: Path
    show_progress: bool
    state: dict[str, Any]
    dev: Dataset
    dev_unseen: list[str]
    _steps_left: int | None
    _bank: PassageBank | None = None

    def bank(self) -> PassageBank:
        """The base student's passage vectors (loaded once)."""
        if self._bank is None:
            self._bank = PassageBank.from_index(self.index_dir(0))  # type: ignore[attr-defined]
        return self._bank

    def dev_measures(self, encoder: DualEncoder) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        """``(dev, dev_unseen)`` measures of a query encoder against the bank."""
        if not self.dev.queries:
            return None, None
        run = bank_run(encoder, self.bank(), self.dev.queries, self.config.dev_depth)
        rl = self.config.relevance_level
        return evaluate_on(self.dev.qrels, run, rl), evaluate_on(self.dev.qrels, run, rl, self.dev_unseen)

    def _start_measures(self, t: int) -> dict[str, Any]:
        """Dev measures of the student iteration ``t`` starts from (epoch 0)."""
        if t == 1:
            return {"dev": self.state["base_dev"], "dev_unseen": self.state.get("base_dev_unseen")}
        previous = self.state["iterations"][str(t - 1)]
        return {"dev": previous.get("dev"), "dev_unseen": previous.get("dev_unseen")}

    def _train_query_tower(self, t: int) -> bool:
        """Train iteration ``t``'s query encoder; returns False when ``stop_after`` ended this process's work first."""
        config = self.config
        header, records, queries = self._training_set(t)  # type: ignore[attr-defined]
        views = {q.query_id: q for q in queries}
        lists = {r.query_id: kd_list(r, config.kd_score) for r in records}
        bank = self.bank()
        column = bank.column()
        vectors = bank.vectors.to(config.device)  # [passages, dim]

        batches_per_epoch, total_micro, total_steps = step_schedule(queries, config, t)
        iter_dir: Path = self.iter_dir(t)  # type: ignore[attr-defined]
        checkpoint, best_dir = iter_dir / "checkpoint", iter_dir / "best"
        start_dir = self.student_dir(t - 1)  # type: ignore[attr-defined]
        opened = open_student(config, t, checkpoint, start_dir, total_steps, {"max_query_length": config.query_length})
        student, view, optimizer, scheduler = opened.student, opened.view, opened.optimizer, opened.scheduler
        step = 0
        start = self._start_measures(t)
        start_score = selection_score(start["dev"], start["dev_unseen"], config.select_on)
        progress_state: dict[str, Any] = {"epochs": [{"epoch": 0, **start, "score": start_score}],
                                          "best": {"epoch": 0, "score": start_score}}
        if opened.saved is not None:
            step, progress_state = opened.saved["step"], opened.saved["selection"]
            logger.info("iteration %d: resuming query-tower training at step %d of %d", t, step, total_steps)
        else:
            shutil.rmtree(best_dir, ignore_errors=True)
        truncate_log(self.out / "log.jsonl", t, step)
        loss_fn = MD2PRLoss(config.contrastive_weight, config.sentence_weight, 0.0, config.tau,
                            config.kd_teacher_temperature, config.kd_student_temperature, kd_loss=config.kd_loss)
        logger.info("iteration %d (query tower): %d training queries against a bank of %d passages, %d micro-batches "
                    "of %d queries a epoch, %d steps; KD lists of %.1f candidates", t, len(queries), len(bank.docids),
                    batches_per_epoch, config.queries_per_batch, total_steps,
                    float(np.mean([len(lists.get(q.query_id, ())) for q in queries])))
        plans: dict[int, list] = {}
        started = time.monotonic()
        start_step = step
        stop_at = total_steps if self._steps_left is None else min(total_steps, step + self._steps_left)
        progress = tqdm(total=total_steps, initial=step, desc=f"query tower iteration {t}", unit="step",
                        disable=not self.show_progress)

        def state_record() -> dict[str, Any]:
            return {"iteration": t, "step": step, "selection": progress_state, **optimization_state(optimizer, scheduler)}

        student.model.train()
        while step < stop_at:
            first = step * config.accumulation_steps
            micro = range(first, min(first + config.accumulation_steps, total_micro))
            sums: dict[str, float] = {}
            for m in micro:
                epoch, index = divmod(m, batches_per_epoch)
                groups = plans.setdefault(epoch, plan_epoch(queries, config, t, epoch))[index]
                targets = bank_targets(groups, views, column, lists, len(bank.docids))
                q_emb, _ = view.forward(view.tokenize([g.query for g in groups], "query"))  # [queries, dim]
                similarity = q_emb @ vectors.T  # [queries, passages]
                device = similarity.device
                out = loss_fn(similarity, targets.positive_mask.to(device), targets.valid_mask.to(device),
                              targets.kd_index.to(device), targets.kd_teacher.to(device), targets.kd_mask.to(device), None)
                (out.total / len(micro)).backward()
                for name, value in out.as_floats().items():
                    sums[name] = sums.get(name, 0.0) + value / len(micro)
            optimizer_step(opened, config.max_grad_norm)
            step += 1
            append_log(self.out / "log.jsonl", {
                "iteration": t, "step": step, "epoch": first // batches_per_epoch, **{k: round(v, 5) for k, v in sums.items()},
                "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 2)})
            progress.update(1)
            progress.set_postfix(loss=f"{sums['loss']:.3f}")
            done_epochs = min(step * config.accumulation_steps, total_micro) // batches_per_epoch
            if step == total_steps and min(step * config.accumulation_steps, total_micro) % batches_per_epoch:
                done_epochs += 1  # max_steps ended inside an epoch: measure where it stopped
            if done_epochs > progress_state["epochs"][-1]["epoch"]:
                self._measure_epoch(t, done_epochs, step, student, progress_state, best_dir)
            if step % config.save_every == 0 or step == stop_at:
                save_checkpoint(checkpoint, student, state_record(), TRAINER_STATE_FILE,
                                {CHECKPOINT_CONFIG_FILE: self._config_record()})  # type: ignore[attr-defined]
        progress.close()
        if self._steps_left is not None:
            self._steps_left -= step - start_step
        if step < total_steps:
            return False
        best = progress_state["best"]
        tmp = iter_dir / "student.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if best["epoch"] == 0:
            # no epoch beat the starting student on dev: the iteration keeps it
            DualEncoder.from_pretrained(start_dir).save_pretrained(tmp)
            if (Path(start_dir) / "pairing.json").is_file():
                shutil.copy2(Path(start_dir) / "pairing.json", tmp / "pairing.json")
        else:
            shutil.copytree(best_dir, tmp)
        kept = DualEncoder.from_pretrained(tmp)
        if kept.fingerprint != bank.encoder_fingerprint:
            write_pairing(tmp, bank, kept.fingerprint)
        replace_dir(tmp, iter_dir / "student")
        shutil.rmtree(checkpoint, ignore_errors=True)
        shutil.rmtree(best_dir, ignore_errors=True)
        write_text_atomic(iter_dir / "epochs.jsonl", "".join(json.dumps(e) + "\n" for e in progress_state["epochs"]))
        self._record(t, "train", {  # type: ignore[attr-defined]
            "steps": total_steps, "queries": len(queries), "tower": "query", "bank_passages": len(bank.docids),
            "kd_list_mean": round(float(np.mean([len(lists.get(q.query_id, ())) for q in queries])), 2),
            "selected_epoch": best["epoch"], "epochs": progress_state["epochs"],
            "final_losses": final_losses(self.out / "log.jsonl", t, ("loss", "contrastive", "sentence_kd")),
        }, time.monotonic() - started)
        return True

    def _measure_epoch(self, t: int, epoch: int, step: int, student: DualEncoder, progress_state: dict[str, Any], best_dir: Path) -> None:
        """Dev measures after ``epoch``; the best epoch so far is saved to ``best_dir``."""
        student.model.eval()
        dev, dev_unseen = self.dev_measures(student)
        student.model.train()
        score = selection_score(dev, dev_unseen, self.config.select_on)
        entry = {"epoch": epoch, "step": step, "dev": dev, "dev_unseen": dev_unseen, "score": score}
        progress_state["epochs"].append(entry)
        logger.info("iteration %d epoch %d: dev %s, dev unseen-positive %s", t, epoch, dev, dev_unseen)
        if score > progress_state["best"]["score"]:
            progress_state["best"] = {"epoch": epoch, "score": score}
            tmp = best_dir.with_name(best_dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            student.save_pretrained(tmp)
            replace_dir(tmp, best_dir)

    def _evaluate_query_tower(self, t: int) -> None:
        """Phase 5 of a query-tower run: dev measures of S_t against the bank (no corpus encoding)."""
        started = time.monotonic()
        student = DualEncoder.from_pretrained(self.student_dir(t), device=self.config.device)  # type: ignore[attr-defined]
        dev, dev_unseen = self.dev_measures(student)
        self._record(t, "dev", dev, time.monotonic() - started)  # type: ignore[attr-defined]
        self._record(t, "dev_unseen", dev_unseen)  # type: ignore[attr-defined]
        self._record(t, "student", {"dir": self.student_dir(t), "fingerprint": student.fingerprint,  # type: ignore[attr-defined]
                                    "tower": "query", "index": str(self.index_dir(0))})  # type: ignore[attr-defined]
