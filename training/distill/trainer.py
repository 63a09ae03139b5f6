"""The distillation trainer: :class:`Distiller` runs the phases of each iteration (see the
package docstring) and keeps the run's state; :func:`distill` is its entry point."""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.cross_encoder import CROSS_ENCODER_CONFIG_FILE, CrossEncoderConfig
from retrieval.datasets import Dataset, iter_corpus, load_dataset
from retrieval.encoder import DualEncoder
from retrieval.index import read_manifest
from retrieval.index_versions import resolve_index_dir
from retrieval.jsonio import read_json_object, read_jsonl, write_text_atomic
from retrieval.jsonio import write_json_atomic as _write_json
from retrieval.metrics import unseen_positive_queries
from retrieval.retriever import Retriever

from ..annotate import annotate_file
from ..checkpoint import replace_dir as _replace_dir
from ..data import TrainingHeader, TrainingRecord, load_training_file, write_training_file
from ..errors import TrainingError
from ..false_negatives import FilteredQuery, FilterResult, filter_false_negatives, flag_quality, with_pseudo_positive
from ..mining import dense_source_info, mine
from .config import CONFIG_FILE, STATE_FILE, DistillConfig
from .bank import PairedRetriever, read_pairing
from .batches import training_queries
from .datasets import build_student_index, evaluate_dev, hidden_positives, unlabelled_dataset, with_title_queries, without
from .selection import select_iteration
from .sharing import FirstIterationSharing, share_dir, share_file
from .query_phase import QueryTowerPhase
from .train_phase import TrainPhase

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- the trainer
class Distiller(FirstIterationSharing, TrainPhase, QueryTowerPhase):
    """One distillation run in one output directory (see the module docstring)."""

    def __init__(self, config: DistillConfig, out_dir: Path, show_progress: bool = True) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.show_progress = show_progress
        self.state: dict[str, Any] = {}
        self.dataset_dir = Path(config.dataset)
        self.fit = load_dataset(self.dataset_dir, f"{config.split}:fit")
        if config.max_queries:
            kept = dict(list(self.fit.queries.items())[: config.max_queries])
            self.fit = Dataset(self.fit.corpus_path, kept, {q: self.fit.qrels[q] for q in kept})
        self.dev = load_dataset(self.dataset_dir, f"{config.split}:dev")
        if not self.fit.queries:
            raise TrainingError(f"{config.dataset}: split {config.split}:fit has no judged queries")
        # dev queries none of whose positives is a fit positive: selection can look at them (select_on)
        self.dev_unseen = unseen_positive_queries(self.dev.qrels, self.fit.qrels, config.relevance_level)
        self.hidden = hidden_positives(self.fit.qrels, config.hide_positives, config.seed, config.relevance_level)
        self.mining_dataset = with_title_queries(without(self.fit, self.hidden), config.title_queries)
        self.unlabelled = unlabelled_dataset(self.dataset_dir, self.fit.corpus_path, config.unlabelled_queries, config.max_unlabelled)
        # None: a supervised run without a teacher (annotation then adds no scores)
        self.teacher_config = _read_teacher_config(config.teacher) if config.teacher or config.needs_teacher else None
        self.fusion = self.teacher_config.fusion if config.teacher_fusion and self.teacher_config else None
        self._passages: dict[str, str] | None = None
        self._base_fingerprint: str | None = None

    # ---- paths
    def iter_dir(self, t: int) -> Path:
        return self.out / f"iter-{t:02d}"

    def index_dir(self, s: int) -> Path:
        if s == 0 and self.config.base_index:
            # resolved once and kept in the state, so a resume uses the same version even if CURRENT moved
            if not self.state.get("base_index"):
                self.state["base_index"] = str(resolve_index_dir(self.config.base_index))
            return Path(self.state["base_index"])
        return self.out / "indexes" / f"s{s}"

    def student_dir(self, s: int) -> str:
        return self.config.student if s == 0 else str(self.iter_dir(s) / "student")

    @property
    def passages(self) -> dict[str, str]:
        if self._passages is None:
            self._passages = {p.docid: p.full_text for p in iter_corpus(self.fit.corpus_path)}
        return self._passages

    # ---- state
    def _save_state(self) -> None:
        _write_json(self.out / STATE_FILE, self.state)

    def _record(self, t: int, key: str, value: Any, seconds: float | None = None) -> None:
        entry = self.state["iterations"].setdefault(str(t), {"iteration": t})
        entry[key] = value
        if seconds is not None:
            entry.setdefault("seconds", {})[key] = round(seconds, 1)

    def _advance(self, t: int, phase: str) -> None:
        self.state["iteration"], self.state["phase"] = t, phase
        self._save_state()

    # ---- the run
    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        config_file = self.out / CONFIG_FILE
        self._check_fusion_index()  # before anything is written: a refused run leaves no trace
        if resume:
            if not (self.out / STATE_FILE).is_file():
                raise TrainingError(f"{self.out}: nothing to resume (no {STATE_FILE})")
            # through from_dict: a run saved before a setting existed has that setting's default
            saved = DistillConfig.from_dict(read_json_object(config_file, error=TrainingError)["distill"]).to_dict()
            if saved != self.config.to_dict():
                raise TrainingError(f"{self.out}: --resume with settings different from the saved {CONFIG_FILE}")
            self.state = read_json_object(self.out / STATE_FILE, error=TrainingError)
            if self._shares_pending():
                self.first_iteration_source()  # still before anything is written
            logger.info("resuming at iteration %d, phase %s", self.state["iteration"], self.state["phase"])
        else:
            if config_file.exists():
                raise TrainingError(f"{self.out} already holds a distillation run: pass --resume to continue it, or pick another --output-dir")
            if self.config.first_iteration_from:
                self.first_iteration_source()  # before anything is written: a refused run leaves no trace
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(config_file, self._config_record())
            self.state = {"iteration": 1, "phase": "mine", "finished": False, "base_dev": None,
                          "frozen_threshold": None, "iterations": {}}
            if self.config.first_iteration_from:
                self.state["first_iteration_from"] = str(Path(self.config.first_iteration_from).resolve())
            self._save_state()
        self._steps_left = stop_after
        while not self.state["finished"]:
            t, phase = self.state["iteration"], self.state["phase"]
            started = time.monotonic()
            if phase == "mine":
                self._mine(t)
                self._advance(t, "annotate")
            elif phase == "annotate":
                self._record(t, "annotate", self._annotate(t), time.monotonic() - started)
                self._advance(t, "filter")
            elif phase == "filter":
                self._filter(t)
                self._advance(t, "train")
            elif phase == "train":
                if not (self._train_query_tower(t) if self.config.train_tower == "query" else self._train(t)):
                    return {"finished": False, "iteration": t, "phase": "train"}
                self._advance(t, "evaluate")
            elif phase == "evaluate":
                if self.config.train_tower == "query":
                    self._evaluate_query_tower(t)
                    self._write_iterations(t)
                else:
                    self._evaluate(t)
                if t == self.config.iterations:
                    self.state["finished"] = True
                    self._save_state()
                else:
                    self._advance(t + 1, "mine")
            else:
                raise TrainingError(f"{self.out / STATE_FILE}: unknown phase {phase!r}")
        return self._finish()

    def _config_record(self) -> dict[str, Any]:
        return {
            "distill": self.config.to_dict(),
            "teacher": {"source": self.config.teacher, "fingerprint": self.teacher_config.fingerprint if self.teacher_config else None,
                        "fusion": self.fusion.model_dump() if self.fusion else None},
            "dataset": {"fit_queries": len(self.fit.queries), "dev_queries": len(self.dev.queries),
                        "unlabelled_queries": len(self.unlabelled.queries),
                        "hidden_positives": sum(len(v) for v in self.hidden.values())},
        }

    def _check_fusion_index(self) -> None:
        """A fused teacher needs the dense scores of its own encoder: the base student's index, or ``teacher_index``."""
        if self.fusion is None or self.config.teacher_index:
            return
        base = DualEncoder.from_pretrained(self.config.student)
        if base.fingerprint != self.fusion.dense_encoder_fingerprint:
            raise TrainingError(
                f"the teacher's fused score uses the dense scores of encoder {self.fusion.dense_encoder} "
                f"({self.fusion.dense_encoder_fingerprint[:12]}), not the base student {self.config.student}: "
                "pass --teacher-index (an index built by that encoder) or --teacher-fusion false"
            )

    def fusion_index(self) -> Path | None:
        """Where annotation reads the fused teacher's dense scores when the mined file has another student's."""
        if self.fusion is None:
            return None
        return Path(self.config.teacher_index) if self.config.teacher_index else self.index_dir(0)

    # ---- phase 1: mine
    def _mine(self, t: int) -> None:
        started = time.monotonic()
        shared = self.first_iteration_source() if t == 1 and self.config.first_iteration_from else None
        if t == 1:
            base = DualEncoder.from_pretrained(self.config.student, device=self.config.device)
            if shared is not None:
                self._share_base_index(shared)
            if self.config.base_index:
                manifest = read_manifest(self.index_dir(0))
                if manifest.encoder.fingerprint != base.fingerprint:
                    raise TrainingError(f"{self.index_dir(0)}: built by encoder {manifest.encoder.fingerprint[:12]} "
                                        f"({manifest.encoder.source}), not the base student {self.config.student}")
            else:
                build_student_index(base, self.fit.corpus_path, self.index_dir(0), self.config.encode_batch_size, self.show_progress)
            if self.state["base_dev"] is None:
                retriever = Retriever.open(self.index_dir(0), reuse_encoder=base)
                try:
                    self.state["base_dev"] = evaluate_dev(retriever, self.dev, self.config.dev_depth, self.config.relevance_level)
                    self.state["base_dev_unseen"] = evaluate_dev(retriever, self.dev, self.config.dev_depth, self.config.relevance_level,
                                                                 self.dev_unseen)
                finally:
                    retriever.close()
                logger.info("base student on %s:dev: %s", self.config.split, self.state["base_dev"])
        if shared is not None:
            self.iter_dir(t).mkdir(parents=True, exist_ok=True)
            share_file(shared.iteration_dir / "mined.jsonl", self.iter_dir(t) / "mined.jsonl")
            self._record(t, "shared_from", str(shared.directory))
            self._record(t, "mine", shared.mine_summary, time.monotonic() - started)
            logger.info("iteration %d: mined negatives taken from %s (%d queries)", t, shared.directory,
                        shared.mine_summary.get("queries", 0))
            return
        if t > 1 and self.config.train_tower == "query" and read_pairing(self.student_dir(t - 1)) is not None:
            # a query-tower student searches the base index (the passage encoder it pairs with)
            retriever: Retriever | PairedRetriever = PairedRetriever(
                DualEncoder.from_pretrained(self.student_dir(t - 1), device=self.config.device), self.index_dir(0))
        else:
            index = self.index_dir(0 if self.config.train_tower == "query" else t - 1)
            retriever = Retriever.open(index, self.student_dir(t - 1) if t > 1 else self.config.student)
        try:
            use_bm25 = t == 1 or self.config.mine_bm25 == "always"
            sources: dict[str, dict] = {"dense": dense_source_info(retriever)}
            bm25 = None
            if use_bm25:
                bm25_config = BM25Config()
                bm25 = BM25Index.build(self.fit.iter_corpus(), bm25_config, show_progress=False)
                sources = {"bm25": bm25_config.to_dict(), **sources}
            header = TrainingHeader(dataset=str(self.dataset_dir), split=f"{self.config.split}:fit",
                                    depth=self.config.mining_depth, relevance_level=self.config.relevance_level,
                                    sources=sources)
            # the corpus's docids from the passages training reads anyway: mining needs no pass of its own
            corpus_ids = self.passages.keys()
            records = list(mine(self.mining_dataset, bm25, retriever, self.config.mining_depth, self.show_progress,
                                relevance_level=self.config.relevance_level, corpus_ids=corpus_ids))
            if self.unlabelled.queries:
                records += mine(self.unlabelled, bm25, retriever, self.config.mining_depth, self.show_progress,
                                unlabelled=True, corpus_ids=corpus_ids)
        finally:
            retriever.close()
        self.iter_dir(t).mkdir(parents=True, exist_ok=True)
        write_training_file(self.iter_dir(t) / "mined.jsonl", header, records)
        summary = {
            "queries": len(records),
            "unlabelled_queries": len(self.unlabelled.queries),
            "sources": sorted(sources),
            "negatives_per_query": float(np.mean([len(r.negatives) for r in records])) if records else 0.0,
        }
        if self.hidden:
            summary["hidden_mined_as_negatives"] = sum(
                1 for r in records for c in r.negatives if c.docid in self.hidden.get(r.query_id, ())
            )
        self._record(t, "mine", summary, time.monotonic() - started)
        logger.info("iteration %d: mined %d queries (%.1f negatives each) with %s", t, len(records),
                    summary["negatives_per_query"], " + ".join(summary["sources"]))


    # ---- phase 2: annotate
    def _annotate(self, t: int) -> dict[str, Any]:
        """Annotate iteration ``t``'s mined file (or take iteration 1's from ``first_iteration_from``); returns its summary."""
        word = self.config.word_weight > 0
        if t == 1 and self.config.first_iteration_from:
            shared = self.first_iteration_source()  # again: the source may have changed since the mine phase
            mined = self.iter_dir(t) / "mined.jsonl"
            source_mined = shared.iteration_dir / "mined.jsonl"
            if not (os.path.samefile(mined, source_mined) or filecmp.cmp(mined, source_mined, shallow=False)):
                raise TrainingError(f"--first-iteration-from {self.config.first_iteration_from}: its iter-01/mined.jsonl "
                                    f"changed since this run took it ({mined})")
            if word:
                share_dir(shared.iteration_dir / "attention", self.iter_dir(t) / "attention")
            # last: the annotated file's presence never claims maps that are not in place yet
            share_file(shared.iteration_dir / "annotated.jsonl", self.iter_dir(t) / "annotated.jsonl")
            logger.info("iteration %d: teacher annotation%s taken from %s", t, " and attention maps" if word else "", shared.directory)
            return {"attention": word, "shared_from": str(shared.directory)}
        if self.teacher_config is None:
            share_file(self.iter_dir(t) / "mined.jsonl", self.iter_dir(t) / "annotated.jsonl")  # no scores to add
            logger.info("iteration %d: no teacher: training on the mined file as it is", t)
            return {"attention": False, "teacher": None}
        stats: dict[str, int] = {}
        annotate_file(
            self.iter_dir(t) / "mined.jsonl",
            self.iter_dir(t) / "annotated.jsonl",
            self.config.teacher,
            use_fusion=self.config.teacher_fusion,
            index=self.fusion_index(),
            attention_dir=self.iter_dir(t) / "attention" if word else None,
            attention_negatives=self.config.attention_negatives,
            attention_layers=tuple(self.config.attention_layers),
            batch_size=self.config.teacher_batch_size,
            show_progress=self.show_progress,
            score_cache=self.score_cache_files(t),
            stats=stats,
        )
        return {"attention": word, **stats}

    def score_cache_files(self, t: int) -> list[Path]:
        """Annotated files whose cross-encoder scores iteration ``t``'s annotation reuses
        (:func:`training.annotate.load_score_cache` keeps those of the same teacher and dataset):
        this run's earlier iterations, and every iteration of the runs in ``score_cache_from``."""
        files = [self.iter_dir(s) / "annotated.jsonl" for s in range(1, t)]
        for other in self.config.score_cache_from:
            files += sorted(Path(other).glob("iter-*/annotated.jsonl"))
        unique: list[Path] = []
        for f in files:  # hard-linked copies (shared iteration 1s) are read once
            if f.is_file() and not any(os.path.samefile(f, u) for u in unique):
                unique.append(f)
        return unique

    def _annotated(self, t: int) -> tuple[TrainingHeader, list[TrainingRecord]]:
        """Iteration ``t``'s annotated records (file order), unlabelled queries with their pseudo-positive."""
        header, records = load_training_file(self.iter_dir(t) / "annotated.jsonl")
        return header, [with_pseudo_positive(r) for r in records]

    def _training_set(self, t: int) -> tuple[TrainingHeader, list[TrainingRecord], list[FilteredQuery]]:
        """Iteration ``t``'s annotated records and their filtered training view (``filter.json``),
        for either train phase; a :class:`TrainingError` when no query can train."""
        header, records = self._annotated(t)
        saved = read_json_object(self.iter_dir(t) / "filter.json", error=TrainingError, missing="no filter result (run the filter phase)")
        result = FilterResult(**{k: v for k, v in saved.items() if k != "summary"})
        queries = training_queries(records, result, self.config.negative_depth)
        if not queries:
            raise TrainingError(f"iteration {t}: no query has a positive to train on")
        return header, records, queries

    # ---- phase 3: filter
    def _filter(self, t: int) -> None:
        records = self._annotated(t)[1]
        result = filter_false_negatives(records, self.config.filter_config(), self.state.get("frozen_threshold"))
        if self.config.filter_mode == "static" and self.state.get("frozen_threshold") is None:
            self.state["frozen_threshold"] = result.floor
        summary = result.summary()
        if self.hidden:
            summary["hidden"] = flag_quality(result.flagged, self.hidden, records)
        _write_json(self.iter_dir(t) / "filter.json", result.to_json())
        self._record(t, "filter", summary)
        logger.info(
            "iteration %d: false-negative filter (%s) floor %s, per-query thresholds %s..%s: %d of %d negatives flagged (%s)",
            t, summary["mode"], _fmt(summary["floor"]), _fmt(summary["threshold_min"]), _fmt(summary["threshold_max"]),
            summary["flagged"], summary["negatives"], summary["action"],
        )
        if self.hidden:
            logger.info("iteration %d: hidden positives: %s", t, summary["hidden"])

    # ---- phase 5: evaluate
    def _evaluate(self, t: int) -> None:
        started = time.monotonic()
        student = DualEncoder.from_pretrained(self.student_dir(t), device=self.config.device)
        build_student_index(student, self.fit.corpus_path, self.index_dir(t), self.config.encode_batch_size, self.show_progress)
        retriever = Retriever.open(self.index_dir(t), reuse_encoder=student)
        try:
            metrics = evaluate_dev(retriever, self.dev, self.config.dev_depth, self.config.relevance_level)
            unseen = evaluate_dev(retriever, self.dev, self.config.dev_depth, self.config.relevance_level, self.dev_unseen)
        finally:
            retriever.close()
        self._record(t, "dev", metrics, time.monotonic() - started)
        self._record(t, "dev_unseen", unseen)
        self._record(t, "student", {"dir": self.student_dir(t), "fingerprint": student.fingerprint})
        self._write_iterations(t)

    def _write_iterations(self, t: int) -> None:
        """Save the state and ``iterations.jsonl`` (one line per evaluated iteration)."""
        self._save_state()
        metrics = self.state["iterations"][str(t)].get("dev")
        lines = [json.dumps(self.state["iterations"][k]) for k in sorted(self.state["iterations"], key=int)
                 if "dev" in self.state["iterations"][k]]
        write_text_atomic(self.out / "iterations.jsonl", "".join(line + "\n" for line in lines))
        logger.info("iteration %d: %s:dev %s (base student: %s)", t, self.config.split, metrics, self.state["base_dev"])

    def _finish(self) -> dict[str, Any]:
        done = [self.state["iterations"][str(t)] for t in range(1, self.config.iterations + 1)]
        base = {"iteration": 0, "dev": self.state["base_dev"], "dev_unseen": self.state.get("base_dev_unseen")}
        chosen = select_iteration(base, done, self.config.select, self.config.select_on)
        model = self.out / "model"
        if not (model / "encoder_config.json").is_file() or self.state.get("selected") != chosen["iteration"]:
            tmp = self.out / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if chosen["iteration"] == 0:
                DualEncoder.from_pretrained(self.config.student).save_pretrained(tmp)
            else:
                shutil.copytree(chosen["student"]["dir"], tmp)
            _replace_dir(tmp, model)
            self.state["selected"] = chosen["iteration"]
            self._save_state()
        report = {
            "finished": True,
            "output_dir": str(self.out),
            "model": str(model),
            "selected_iteration": chosen["iteration"],
            # the Flat index of the selected student (iteration 0: the base index, maybe outside this run)
            "selected_index": str(self.index_dir(0 if self.config.train_tower == "query" else chosen["iteration"])),
            "select": self.config.select,
            "base_dev": self.state["base_dev"],
            "base_dev_unseen": self.state.get("base_dev_unseen"),
            "select_on": self.config.select_on,
            "train_tower": self.config.train_tower,
            "dev_unseen_queries": len(self.dev_unseen),
            "iterations": done,
            "config": self.config.to_dict(),
        }
        _write_json(self.out / "report.json", report)
        logger.info("distilled student: %s (iteration %d, dev %s, dev unseen-positive %s)", model, chosen["iteration"],
                    chosen.get("dev"), chosen.get("dev_unseen"))
        return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"



def _read_teacher_config(teacher: str) -> CrossEncoderConfig:
    """The teacher's ``cross_encoder_config.json`` (checked before any work starts)."""
    if not teacher:
        raise TrainingError("no teacher given (--teacher: a cross-encoder directory from md2pr-train-teacher)")
    path = Path(teacher) / CROSS_ENCODER_CONFIG_FILE
    if not path.is_file():
        raise TrainingError(f"{teacher}: not a cross-encoder directory (no {CROSS_ENCODER_CONFIG_FILE})")
    try:
        return CrossEncoderConfig.model_validate_json(path.read_text())
    except ValueError as exc:
        raise TrainingError(f"{path}: invalid cross-encoder config: {exc}") from None


def distill(
    config: DistillConfig, out_dir: str | os.PathLike[str], resume: bool = False, show_progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) a distillation; returns the report (also ``report.json``).

    ``stop_after`` ends this process's work after that many optimizer steps (with a
    checkpoint), as a kill would; the result then says ``"finished": false``.
    """
    return Distiller(config, Path(out_dir), show_progress).run(resume=resume, stop_after=stop_after)


def iter_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The per-step lines of a run's ``log.jsonl`` (:func:`retrieval.jsonio.read_jsonl`: a line cut by a kill is skipped)."""
    yield from read_jsonl(path)
