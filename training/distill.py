"""The MD2PR distillation trainer: iterations of mine -> annotate -> filter -> train -> evaluate -> save.

Each iteration ``t`` (1-based), with ``S_0`` the base student:

1. **mine** (:func:`training.mining.mine`): hard negatives for every ``<split>:fit`` query from
   the dense index of ``S_{t-1}`` (and BM25: in the first iteration, or in every one with
   ``mine_bm25="always"``), and for every unlabelled query (``unlabelled_queries``: the unjudged
   topics of a TREC DL dataset) candidates alone, whose best by the teacher becomes its positive
   after annotation (:func:`training.false_negatives.with_pseudo_positive`);
2. **annotate** (:func:`training.annotate.annotate_file`): the teacher's score of every
   candidate (:func:`retrieval.cross_encoder.teacher_scores`) and, when word-level KD is on,
   its query->passage attention maps for the positives and the first negatives;
3. **filter** (:func:`training.false_negatives.filter_false_negatives`): this iteration's
   threshold, the suspected false negatives dropped (or counted as positives);
4. **train** ``S_t`` from ``S_{t-1}``: one loop over micro-batches of ``queries_per_batch``
   queries, each with one positive and ``negatives`` hard negatives (the other queries'
   passages are in-batch negatives), loss :class:`training.losses.MD2PRLoss`, gradient
   accumulation, AdamW with linear warm-up and decay, a checkpoint every ``save_every`` steps;
5. **evaluate** ``S_t`` on ``<split>:dev`` (the corpus encoded into a Flat index, which is also
   the next iteration's mining index) and save it.

Runs that differ only after iteration 1's annotation (the ablations: no word-level KD, no
sentence-level KD, static threshold, no filter) mine and annotate the same iteration 1, and
annotation is the slow phase on CPUs. With ``first_iteration_from`` (another run directory)
iteration 1's **mine** and **annotate** phases take that run's files instead of computing them:
``indexes/s0`` (unless ``base_index``), ``iter-01/mined.jsonl``, ``iter-01/annotated.jsonl`` and,
when this run uses word-level KD, ``iter-01/attention/`` are hard-linked (copied where links
fail), each put in place atomically. The source must have finished annotating its iteration 1
and agree on every setting in :data:`FIRST_ITERATION_FIELDS` (and on the teacher's and the base
student's fingerprints); this is checked before anything is written and again at each phase.
The base student's dev metrics, filter, training, evaluation and later iterations are computed
by this run.

The distilled student is ``<output>/model``: a :class:`retrieval.encoder.DualEncoder` directory
(``save_pretrained``: weights, tokenizer, ``encoder_config.json`` with its fingerprint, the
sentence-transformers files) that ``md2pr-build-index`` and the service load unchanged.

Output directory::

    config.json             the full DistillConfig (and the teacher's identity)
    state.json              where the run is: iteration, phase, per-iteration results (with
                            first_iteration_from: "first_iteration_from" and iteration 1's
                            "shared_from", the source run; its "mine" summary is the source's)
    log.jsonl               one line per optimizer step: iteration, step, loss and each term, lr
    iterations.jsonl        one line per finished iteration: mining, filter, training, dev metrics
    indexes/s<t>/           the Flat index of student S_t (s0: the base student)
    iter-<t>/mined.jsonl, annotated.jsonl, attention/, filter.json
                            (iteration 1's first three, and indexes/s0, are links to the
                            first_iteration_from run's files when it is set; the annotated
                            header then names that run's attention/, this run reads its own)
    iter-<t>/checkpoint/    while training: the student + trainer_state.pt + distill_config.json
    iter-<t>/student/       S_t
    model/                  the selected student (best dev nDCG@10, or the last)
    report.json             summary

``resume=True`` continues a killed run from ``state.json``: a finished phase is not redone,
annotation continues from its partial file, and training continues at the optimizer step of
its checkpoint (the batches of an epoch are a pure function of the seed, the iteration and the
epoch, and the RNG state is restored, so a resumed run computes what the uninterrupted one would).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.cross_encoder import CROSS_ENCODER_CONFIG_FILE, CrossEncoder, CrossEncoderConfig
from retrieval.datasets import Dataset, iter_corpus, load_dataset, load_unjudged_queries
from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError
from retrieval.index import EncoderRef, IndexWriter, read_manifest
from retrieval.index_versions import resolve_index_dir
from retrieval.metrics import DEFAULT_MEASURES, evaluate_run
from retrieval.retriever import Retriever
from retrieval.types import Passage

from .alignment import align_attention
from .annotate import annotate_file, load_attention
from .data import TrainingHeader, TrainingRecord, load_training_file, write_training_file
from .errors import TrainingError
from .false_negatives import (
    FilterConfig,
    FilteredQuery,
    FilterResult,
    apply_filter,
    filter_false_negatives,
    flag_quality,
    with_pseudo_positive,
)
from .losses import MD2PRLoss, WordInputs
from .mining import dense_source_info, mine

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
TRAINER_STATE_FILE = "trainer_state.pt"
CHECKPOINT_CONFIG_FILE = "distill_config.json"
PHASES = ("mine", "annotate", "filter", "train", "evaluate")
DEV_MEASURES = ("nDCG@10", "MRR@10", "R@100")

#: The settings that decide iteration 1's mined and annotated files: a run takes its iteration 1
#: from another (``first_iteration_from``) only when both have the same values. Left out on
#: purpose, because they do not change those files: ``mine_bm25`` (iteration 1 mines with BM25 and
#: the base student either way), ``teacher_batch_size``, ``encode_batch_size`` and ``device`` (how
#: the work is batched and where, not what is scored), and every filter, training and evaluation
#: setting (each run computes those phases itself). Besides these settings the teacher's
#: fingerprint (``config.json``) and the base student's (the mined file's dense source) must match.
FIRST_ITERATION_FIELDS = (
    "dataset", "split", "teacher", "student", "base_index", "teacher_fusion", "teacher_index",
    "max_queries", "mining_depth", "hide_positives", "unlabelled_queries", "max_unlabelled", "relevance_level",
)
#: Compared only when ``hide_positives > 0``: the seed then chooses which positives are hidden
#: from mining; otherwise nothing in iteration 1's mining or annotation depends on it.
FIRST_ITERATION_SEED_FIELDS = ("seed",)
#: Compared only when this run uses the teacher's attention maps (``word_weight > 0``): a run
#: without word-level KD may take its iteration 1 from one with other (or with any) maps.
FIRST_ITERATION_ATTENTION_FIELDS = ("attention_negatives", "attention_layers")
#: Settings holding paths: compared as resolved paths (``builtin:`` names as they are).
_PATH_FIELDS = frozenset({"dataset", "teacher", "student", "base_index", "teacher_index"})


@dataclass(frozen=True)
class DistillConfig:
    """Every setting of a distillation run (saved as ``config.json`` and beside each checkpoint).

    Ablation switches: ``word_weight=0`` (no word-level KD), ``sentence_weight=0`` (no
    sentence-level KD), ``filter_mode="static"`` (one fixed threshold), ``filter_mode="none"``.
    """

    # data and models
    dataset: str = ""  # dataset directory (BEIR, TSV or TREC DL layout)
    split: str = "train"  # qrels split; <split>:fit is trained on, <split>:dev evaluates
    relevance_level: int = 1  # lowest judged grade trained as a positive (2 for TREC DL); dev measures too
    teacher: str = ""  # cross-encoder directory (md2pr-train-teacher's model/)
    student: str = "builtin:all-MiniLM-L6-v2"  # the base student S_0
    base_index: str | None = None  # an existing Flat index of the base student (skips encoding the corpus once)
    teacher_fusion: bool = True  # the teacher's fused score when its config has fitted weights
    teacher_index: str | None = None  # index of the fusion's dense encoder, if it is not the base student
    max_queries: int | None = None  # train on the first N <split>:fit queries only (smoke runs, budgets)
    first_iteration_from: str | None = None  # another run directory: take its iteration 1 mining and annotation
    # unlabelled queries: topic sets of a TREC DL dataset (e.g. dl21 dl22) whose unjudged queries
    # train with the teacher's labels (its best candidate is the positive; see training.false_negatives)
    unlabelled_queries: tuple[str, ...] = ()
    max_unlabelled: int | None = None  # the first N unlabelled queries only (budgets)
    # iterations and batches
    iterations: int = 3
    epochs: int = 1  # per iteration
    max_steps: int | None = None  # optimizer steps per iteration at most (budgets, smoke runs)
    queries_per_batch: int = 8  # queries in one micro-batch
    accumulation_steps: int = 1  # micro-batches per optimizer step
    negatives: int = 3  # hard negatives per query in a micro-batch (with one positive)
    negative_depth: int = 30  # sample negatives among candidates some source ranked within this
    mining_depth: int = 30  # top-k of each source when mining
    mine_bm25: str = "first"  # "first": BM25 + dense in iteration 1, dense after; "always"
    attention_negatives: int = 3  # negatives per query with cached teacher attention (word-level KD)
    attention_layers: tuple[int, ...] = (-1,)  # teacher layers averaged for the attention maps
    teacher_batch_size: int = 32
    # optimisation
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of an iteration's steps
    max_grad_norm: float = 1.0
    # losses
    tau: float = 0.05  # student score s = cosine / tau (InfoNCE and sentence KD)
    contrastive_weight: float = 1.0
    sentence_weight: float = 1.0
    word_weight: float = 0.1
    kd_teacher_temperature: float = 1.0
    kd_student_temperature: float = 1.0
    kd_in_batch: bool = False  # sentence KD over in-batch passages too (the teacher scores them online)
    word_temperature: float = 0.05
    word_normalize: bool = True  # cosine token similarities in the student's matching matrix
    # false-negative filtering
    filter_mode: str = "dynamic"  # dynamic | static | none
    filter_percentile: float = 10.0
    filter_margin: float = 0.1
    static_threshold: float | None = None  # static mode: this value, or iteration 1's floor frozen
    filter_action: str = "drop"  # drop | positive
    hide_positives: float = 0.0  # hide this fraction of training positives from the qrels (filter check)
    # the rest
    train_passage_length: int | None = None  # truncate passages shorter while training (the saved model keeps its own)
    encode_batch_size: int = 32
    dev_depth: int = 100
    select: str = "best"  # best (dev nDCG@10) | last
    save_every: int = 50  # optimizer steps between checkpoints
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "iterations": self.iterations >= 1,
            "epochs": self.epochs >= 1,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "max_queries": self.max_queries is None or self.max_queries >= 1,
            "relevance_level": self.relevance_level >= 1,
            "max_unlabelled": self.max_unlabelled is None or self.max_unlabelled >= 1,
            "queries_per_batch": self.queries_per_batch >= 1,
            "accumulation_steps": self.accumulation_steps >= 1,
            "negatives": self.negatives >= 0,
            "negative_depth": self.negative_depth >= 1,
            "mining_depth": self.mining_depth >= 1,
            "mine_bm25": self.mine_bm25 in ("first", "always"),
            "attention_negatives": self.attention_negatives >= 0,
            "attention_layers": len(self.attention_layers) >= 1,
            "teacher_batch_size": self.teacher_batch_size >= 1,
            "lr": self.lr > 0,
            "warmup": 0 <= self.warmup < 1,
            "tau": self.tau > 0,
            "kd_teacher_temperature": self.kd_teacher_temperature > 0,
            "kd_student_temperature": self.kd_student_temperature > 0,
            "word_temperature": self.word_temperature > 0,
            "hide_positives": 0 <= self.hide_positives < 1,
            "train_passage_length": self.train_passage_length is None or self.train_passage_length >= 8,
            "encode_batch_size": self.encode_batch_size >= 1,
            "dev_depth": self.dev_depth >= 1,
            "select": self.select in ("best", "last"),
            "save_every": self.save_every >= 1,
        }
        for name in ("contrastive_weight", "sentence_weight", "word_weight"):
            checks[name] = getattr(self, name) >= 0
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise TrainingError(f"invalid distillation settings: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.contrastive_weight == self.sentence_weight == self.word_weight == 0:
            raise TrainingError("every loss weight is 0: nothing to train")
        if self.negatives == 0 and self.queries_per_batch == 1:
            raise TrainingError("a micro-batch of one query without hard negatives has nothing to contrast")
        self.filter_config()  # validates the filter settings

    def filter_config(self) -> FilterConfig:
        return FilterConfig(
            mode=self.filter_mode,  # type: ignore[arg-type]
            percentile=self.filter_percentile,
            margin=self.filter_margin,
            static_threshold=self.static_threshold,
            action=self.filter_action,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attention_layers"] = list(self.attention_layers)
        data["unlabelled_queries"] = list(self.unlabelled_queries)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Build from a JSON object (a config file or a saved ``config.json``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise TrainingError(f"unknown distillation settings: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        if "attention_layers" in values:
            values["attention_layers"] = tuple(int(x) for x in values["attention_layers"])
        if "unlabelled_queries" in values:
            values["unlabelled_queries"] = tuple(str(x) for x in values["unlabelled_queries"])
        return cls(**values)


# ----------------------------------------------------------------------------------- helpers
def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + ``os.replace``): a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place, replacing an older one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link ``src`` at ``dst``; copy it where links fail (another filesystem, no link support).

    Sharing by hard link is safe because no phase rewrites a finished file in place: every
    writer here puts a new file in place with ``os.replace``, which leaves the other link alone.
    """
    try:
        os.link(src, dst)
    except OSError as exc:
        logger.debug("hard link %s -> %s failed (%s): copying", src, dst, exc)
        shutil.copy2(src, dst)


def share_file(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` (:func:`_link_or_copy`) atomically: a kill leaves ``dst``
    either absent (or as it was) or complete, never half copied."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _link_or_copy(src, tmp)
    os.replace(tmp, dst)
    # renaming a link over another link of the same file is a no-op that keeps the source name
    tmp.unlink(missing_ok=True)


def share_dir(src: Path, dst: Path) -> None:
    """Put a copy of the directory ``src`` at ``dst`` made of links to its files (copies where
    links fail), built beside it and moved into place whole."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # a killed writer's leftovers (``*.tmp.npz`` of the attention cache) are not part of the result
    shutil.copytree(src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("*.tmp", "*.tmp.*"))
    _replace_dir(tmp, dst)


def _read_header(path: Path) -> TrainingHeader:
    """Line 1 of a training file, without reading its records."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    try:
        return TrainingHeader.model_validate_json(first)
    except ValueError:
        raise TrainingError(f"{path}:1: not an md2pr-training header") from None


def _comparable(name: str, value: Any) -> Any:
    """A setting as compared between runs: paths resolved, sequences as lists."""
    if name in _PATH_FIELDS and isinstance(value, str) and value and not value.startswith("builtin:"):
        return str(Path(value).resolve())
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class FirstIterationSource:
    """A checked ``first_iteration_from`` run: its directory and what this run takes from it."""

    directory: Path  # resolved
    state: dict[str, Any]  # its state.json
    mine_summary: dict[str, Any]  # its iteration 1 "mine" summary

    @property
    def iteration_dir(self) -> Path:
        return self.directory / "iter-01"


def hidden_positives(qrels: dict[str, dict[str, int]], fraction: float, seed: int, relevance_level: int = 1) -> dict[str, set[str]]:
    """Judged positives hidden from training (the false-negative filter check).

    A (query, docid) pair is hidden when a hash of the pair and ``seed`` falls below
    ``fraction``: stable across runs and independent of file order.
    """
    hidden: dict[str, set[str]] = {}
    if fraction <= 0:
        return hidden
    for qid, judged in qrels.items():
        for docid, rel in judged.items():
            digest = hashlib.sha1(f"md2pr-hide:{seed}:{qid}:{docid}".encode()).digest()
            if rel >= relevance_level and int.from_bytes(digest[:8], "big") / 2**64 < fraction:
                hidden.setdefault(qid, set()).add(docid)
    return hidden


def without(dataset: Dataset, hidden: dict[str, set[str]]) -> Dataset:
    """``dataset`` with the ``hidden`` judgements removed (they become unjudged passages)."""
    if not hidden:
        return dataset
    qrels = {q: {d: r for d, r in docs.items() if d not in hidden.get(q, ())} for q, docs in dataset.qrels.items()}
    return Dataset(dataset.corpus_path, dataset.queries, qrels)


def build_student_index(
    encoder: DualEncoder, corpus: Path, directory: Path, batch_size: int = 32, show_progress: bool = True, chunk: int = 1024
) -> Path:
    """Encode the corpus with ``encoder`` into a Flat index at ``directory`` (kept if already complete).

    The manifest names the encoder's fingerprint, so :class:`retrieval.retriever.Retriever`
    refuses it with any other student.
    """
    if (directory / "manifest.json").is_file():
        try:
            if read_manifest(directory).encoder.fingerprint == encoder.fingerprint:
                return directory
        except ArtifactError:
            pass
    shutil.rmtree(directory, ignore_errors=True)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = IndexWriter(tmp, encoder.dimension, "Flat", EncoderRef(source=encoder.source, fingerprint=encoder.fingerprint))
    progress = tqdm(desc=f"encoding corpus ({directory.name})", unit="passage", disable=not show_progress)
    batch: list[Passage] = []

    def flush() -> None:
        vectors = encoder.encode_passages([p.full_text for p in batch], batch_size=batch_size)  # [n, dim]
        writer.add(batch, vectors)
        progress.update(len(batch))
        batch.clear()

    for passage in iter_corpus(corpus):
        batch.append(passage)
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    progress.close()
    writer.finish({"corpus": str(corpus), "purpose": "distillation mining and dev evaluation"})
    os.replace(tmp, directory)
    return directory


def evaluate_dev(retriever: Retriever, dev: Dataset, depth: int, relevance_level: int = 1) -> dict[str, float] | None:
    """nDCG@10, MRR@10 and R@100 of the retriever on the dev queries (``None`` without dev queries);
    grades from ``relevance_level`` up are relevant for MRR and recall."""
    if not dev.queries:
        return None
    run = retriever.search_run(dev.queries, depth)
    return evaluate_run(dev.qrels, run, {name: DEFAULT_MEASURES[name] for name in DEV_MEASURES}, relevance_level)


# ------------------------------------------------------------------------------ batches
@dataclass(frozen=True)
class Group:
    """One query of a micro-batch: its positive, then its hard negatives (docids)."""

    query_id: str
    query: str
    positive: str
    negatives: tuple[str, ...]

    @property
    def docids(self) -> tuple[str, ...]:
        return (self.positive, *self.negatives)


def unlabelled_dataset(root: Path, corpus_path: Path, topic_sets: Sequence[str], limit: int | None) -> Dataset:
    """The unjudged queries of ``topic_sets`` (:func:`retrieval.datasets.load_unjudged_queries`),
    in order, deduplicated, the first ``limit`` of them; no qrels."""
    queries: dict[str, str] = {}
    for name in topic_sets:
        for qid, text in load_unjudged_queries(root, name).items():
            queries.setdefault(qid, text)
    if limit is not None:
        queries = dict(list(queries.items())[:limit])
    return Dataset(corpus_path, queries, {})


def training_queries(records: Sequence[TrainingRecord], result: FilterResult, negative_depth: int) -> list[FilteredQuery]:
    """The filtered training view of every record that can train (a positive and some negative).

    Negatives are restricted to candidates ranked within ``negative_depth`` by some source.
    """
    out = []
    for record in records:
        view = apply_filter(record, result.flagged.get(record.query_id, ()), result.action)
        ranks = {c.docid: c.best_rank for c in record.negatives}
        pool = tuple(d for d in view.negatives if ranks.get(d) is not None and ranks[d] <= negative_depth)
        if view.positives:
            out.append(replace(view, negatives=pool))
    return out


def plan_epoch(queries: Sequence[FilteredQuery], config: DistillConfig, iteration: int, epoch: int) -> list[list[Group]]:
    """The micro-batches of one epoch, in order: a pure function of the queries, the seed, the
    iteration and the epoch (so a resumed run replays the same batches).

    Each query appears once, with a positive drawn from its positives and ``negatives``
    negatives drawn without replacement (with replacement when it has fewer; a query with none
    trains on in-batch negatives only).
    """
    rng = random.Random(f"md2pr-distill:{config.seed}:{iteration}:{epoch}")
    order = list(range(len(queries)))
    rng.shuffle(order)
    groups = []
    for i in order:
        q = queries[i]
        positive = rng.choice(q.positives)
        if config.negatives == 0 or not q.negatives:
            chosen: list[str] = []
        elif len(q.negatives) >= config.negatives:
            chosen = rng.sample(list(q.negatives), config.negatives)
        else:
            chosen = [rng.choice(q.negatives) for _ in range(config.negatives)]
        groups.append(Group(q.query_id, q.query, positive, tuple(chosen)))
    size = config.queries_per_batch
    return [groups[i : i + size] for i in range(0, len(groups), size)]


@dataclass
class BatchTargets:
    """Masks and teacher scores of one micro-batch (see :class:`training.losses.MD2PRLoss`)."""

    columns: list[str]  # docid of each passage column, group after group
    positive_mask: torch.Tensor  # [queries, columns]
    valid_mask: torch.Tensor  # [queries, columns]
    kd_index: torch.Tensor  # [queries, candidates]
    kd_teacher: torch.Tensor  # [queries, candidates]
    kd_mask: torch.Tensor  # [queries, candidates]
    word_pairs: list[tuple[int, int]]  # (query row, passage column) with a cached teacher attention


def batch_targets(
    groups: Sequence[Group],
    views: dict[str, FilteredQuery],
    teacher: dict[tuple[str, str], float],
    attention_keys: Collection[tuple[str, str]],
    online_teacher: Any = None,
    passages: dict[str, str] | None = None,
) -> BatchTargets:
    """Build the masks of a micro-batch.

    Column ``j`` is a positive of query ``i`` when it is one of ``i``'s positives (its own
    group's first passage, or the same passage in another group); it is excluded for ``i`` when
    it is one of ``i``'s dropped suspected false negatives. Sentence-level KD runs over each
    query's own group (teacher scores from annotation), or over every valid column with
    ``online_teacher`` (a :class:`CrossEncoder` scoring the pairs annotation did not cover).
    """
    columns = [d for g in groups for d in g.docids]
    n_q, n_c = len(groups), len(columns)
    positive = torch.zeros(n_q, n_c, dtype=torch.bool)
    valid = torch.ones(n_q, n_c, dtype=torch.bool)
    for i, g in enumerate(groups):
        view = views[g.query_id]
        for j, docid in enumerate(columns):
            positive[i, j] = docid in view.positives
            valid[i, j] = docid not in view.excluded
    starts = np.cumsum([0] + [len(g.docids) for g in groups])
    word_pairs = [
        (i, int(starts[i]) + k) for i, g in enumerate(groups) for k, d in enumerate(g.docids) if (g.query_id, d) in attention_keys
    ]
    if online_teacher is None:
        width = max(len(g.docids) for g in groups)
        kd_index = torch.zeros(n_q, width, dtype=torch.long)
        kd_teacher = torch.zeros(n_q, width)
        kd_mask = torch.zeros(n_q, width, dtype=torch.bool)
        for i, g in enumerate(groups):
            for k, docid in enumerate(g.docids):
                kd_index[i, k] = int(starts[i]) + k
                kd_teacher[i, k] = teacher[(g.query_id, docid)]
                kd_mask[i, k] = True
        return BatchTargets(columns, positive, valid, kd_index, kd_teacher, kd_mask, word_pairs)
    missing = sorted({(g.query_id, d) for i, g in enumerate(groups) for j, d in enumerate(columns)
                      if valid[i, j] and (g.query_id, d) not in teacher})
    if missing:
        assert passages is not None
        queries = {g.query_id: g.query for g in groups}
        scores = online_teacher.score([queries[q] for q, _ in missing], [passages[d] for _, d in missing])
        teacher = {**teacher, **{key: float(s) for key, s in zip(missing, scores.tolist())}}
    kd_index = torch.arange(n_c).repeat(n_q, 1)
    kd_teacher = torch.tensor([[teacher.get((g.query_id, d), 0.0) for d in columns] for g in groups], dtype=torch.float32)
    return BatchTargets(columns, positive, valid, kd_index, kd_teacher, valid.clone(), word_pairs)


def word_inputs(
    pairs: Sequence[tuple[int, int]],
    groups: Sequence[Group],
    columns: Sequence[str],
    attention: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]],
    query_offsets: torch.Tensor,
    passage_offsets: torch.Tensor,
    query_states: torch.Tensor,
    passage_states: torch.Tensor,
) -> WordInputs | None:
    """Aligned teacher attention for the pairs of a micro-batch, on the student's token grid.

    ``query_offsets [queries, q_len, 2]`` / ``passage_offsets [columns, p_len, 2]`` are the
    student tokenizer's spans (``(0, 0)`` for special tokens and padding, which therefore
    align with nothing and are masked).
    """
    if not pairs:
        return None
    q_len, p_len = query_offsets.shape[1], passage_offsets.shape[1]
    target = np.zeros((len(pairs), q_len, p_len), dtype=np.float32)
    q_mask = np.zeros((len(pairs), q_len), dtype=bool)
    p_mask = np.zeros((len(pairs), p_len), dtype=bool)
    q_off, p_off = query_offsets.cpu().numpy(), passage_offsets.cpu().numpy()
    for n, (i, j) in enumerate(pairs):
        matrix, tq, tp = attention[(groups[i].query_id, columns[j])]
        aligned = align_attention(matrix, tq, tp, q_off[i], p_off[j])
        target[n], q_mask[n], p_mask[n] = aligned.target, aligned.query_mask, aligned.passage_mask
    rows = torch.tensor([i for i, _ in pairs])
    cols = torch.tensor([j for _, j in pairs])
    device = query_states.device
    return WordInputs(
        query_states=query_states[rows.to(device)],
        passage_states=passage_states[cols.to(device)],
        target=torch.from_numpy(target).to(device),
        query_mask=torch.from_numpy(q_mask).to(device),
        passage_mask=torch.from_numpy(p_mask).to(device),
    )


# ------------------------------------------------------------------------------- the trainer
class Distiller:
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
        self.hidden = hidden_positives(self.fit.qrels, config.hide_positives, config.seed, config.relevance_level)
        self.mining_dataset = without(self.fit, self.hidden)
        self.unlabelled = unlabelled_dataset(self.dataset_dir, self.fit.corpus_path, config.unlabelled_queries, config.max_unlabelled)
        self.teacher_config = _read_teacher_config(config.teacher)
        self.fusion = self.teacher_config.fusion if config.teacher_fusion else None
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
            saved = json.loads(config_file.read_text())["distill"]
            if saved != self.config.to_dict():
                raise TrainingError(f"{self.out}: --resume with settings different from the saved {CONFIG_FILE}")
            self.state = json.loads((self.out / STATE_FILE).read_text())
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
                if not self._train(t):
                    return {"finished": False, "iteration": t, "phase": "train"}
                self._advance(t, "evaluate")
            elif phase == "evaluate":
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
            "teacher": {"source": self.config.teacher, "fingerprint": self.teacher_config.fingerprint,
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

    def _shares_pending(self) -> bool:
        """Whether iteration 1's mine or annotate phase, taken from ``first_iteration_from``, is still to do."""
        pending = self.state.get("iteration") == 1 and self.state.get("phase") in ("mine", "annotate")
        return bool(self.config.first_iteration_from) and pending

    def base_fingerprint(self) -> str:
        """The base student's fingerprint (loaded once)."""
        if self._base_fingerprint is None:
            self._base_fingerprint = DualEncoder.from_pretrained(self.config.student).fingerprint
        return self._base_fingerprint

    def first_iteration_source(self) -> FirstIterationSource:
        """Check the ``first_iteration_from`` run; raises :class:`TrainingError` (one line) when this
        run may not take its iteration 1 mining and annotation from it.

        Refused: a directory that is not a run, a run that has not finished annotating its
        iteration 1, a run whose settings in :data:`FIRST_ITERATION_FIELDS` (and the seed with
        hidden positives, the attention settings when this run uses the maps) or whose teacher or
        base student fingerprints differ, and a run without attention maps when this run needs them.
        """
        assert self.config.first_iteration_from
        directory = Path(self.config.first_iteration_from).resolve()
        where = f"--first-iteration-from {self.config.first_iteration_from}"
        if directory == self.out.resolve():
            raise TrainingError(f"{where}: that is this run's own output directory")
        if not (directory / CONFIG_FILE).is_file() or not (directory / STATE_FILE).is_file():
            raise TrainingError(f"{where}: not a distillation run directory (no {CONFIG_FILE} and {STATE_FILE})")
        try:
            record = json.loads((directory / CONFIG_FILE).read_text())
            state = json.loads((directory / STATE_FILE).read_text())
            theirs: dict[str, Any] = record["distill"]
            iteration, phase = int(state["iteration"]), str(state["phase"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{where}: unreadable {CONFIG_FILE} or {STATE_FILE} ({exc!r})") from None
        annotated = iteration > 1 or phase in PHASES[PHASES.index("annotate") + 1 :] or bool(state.get("finished"))
        summary = state.get("iterations", {}).get("1", {}).get("mine")
        iteration_dir = directory / "iter-01"
        mined, annotated_file = iteration_dir / "mined.jsonl", iteration_dir / "annotated.jsonl"
        if not annotated or summary is None:
            raise TrainingError(f"{where}: that run has not finished annotating its iteration 1 "
                                f"(it is at iteration {iteration}, phase {phase})")
        if not mined.is_file() or not annotated_file.is_file():
            raise TrainingError(f"{where}: {iteration_dir} lacks mined.jsonl or annotated.jsonl")

        ours = self.config.to_dict()
        defaults = {f.name: f.default for f in fields(DistillConfig)}  # for a source saved before a setting existed
        compared = list(FIRST_ITERATION_FIELDS)
        if self.config.hide_positives > 0:
            compared += FIRST_ITERATION_SEED_FIELDS
        word = self.config.word_weight > 0
        if word:
            compared += FIRST_ITERATION_ATTENTION_FIELDS
        differ = [
            f"{name} ({ours[name]!r} here, {theirs.get(name, defaults[name])!r} there)"
            for name in compared
            if _comparable(name, ours[name]) != _comparable(name, theirs.get(name, defaults[name]))
        ]
        if differ:
            raise TrainingError(f"{where}: iteration 1 was mined or annotated with other settings: {'; '.join(differ)}")
        their_teacher = (record.get("teacher") or {}).get("fingerprint")
        if their_teacher != self.teacher_config.fingerprint:
            raise TrainingError(f"{where}: its teacher has fingerprint {str(their_teacher)[:12]}, this run's "
                                f"{self.teacher_config.fingerprint[:12]} (the teacher changed since)")
        mined_header, annotated_header = _read_header(mined), _read_header(annotated_file)
        their_student = mined_header.sources.get("dense", {}).get("fingerprint")
        if their_student != self.base_fingerprint():
            raise TrainingError(f"{where}: iteration 1 was mined with student {str(their_student)[:12]}, this run's base "
                                f"student is {self.base_fingerprint()[:12]} (the student changed since)")
        if (annotated_header.teacher or {}).get("fingerprint") != self.teacher_config.fingerprint:
            raise TrainingError(f"{where}: {annotated_file} was annotated by another teacher")
        if word and (not (annotated_header.teacher or {}).get("attention") or not (iteration_dir / "attention").is_dir()):
            raise TrainingError(f"{where}: that run has no teacher attention maps for iteration 1 (it ran without "
                                "word-level KD) and this one needs them (word_weight > 0)")
        return FirstIterationSource(directory, state, dict(summary))

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
        retriever = Retriever.open(self.index_dir(t - 1), self.student_dir(t - 1) if t > 1 else self.config.student)
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

    def _share_base_index(self, shared: FirstIterationSource) -> None:
        """Take the base student's index the source mined with: its resolved ``base_index``
        version, or links to its ``indexes/s0`` (rebuilt here, as without sharing, if it is gone)."""
        if self.config.base_index:
            if shared.state.get("base_index"):
                self.state["base_index"] = shared.state["base_index"]
            return
        source = shared.directory / "indexes" / "s0"
        if (source / "manifest.json").is_file() and not (self.index_dir(0) / "manifest.json").is_file():
            self.index_dir(0).parent.mkdir(parents=True, exist_ok=True)
            share_dir(source, self.index_dir(0))

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
        )
        return {"attention": word}

    def _annotated(self, t: int) -> tuple[TrainingHeader, list[TrainingRecord]]:
        """Iteration ``t``'s annotated records (file order), unlabelled queries with their pseudo-positive."""
        header, records = load_training_file(self.iter_dir(t) / "annotated.jsonl")
        return header, [with_pseudo_positive(r) for r in records]

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

    # ---- phase 4: train
    def _train(self, t: int) -> bool:
        """Train S_t; returns False when ``stop_after`` ended this process's work first."""
        config = self.config
        header, records = self._annotated(t)
        result = FilterResult(**{k: v for k, v in json.loads((self.iter_dir(t) / "filter.json").read_text()).items() if k != "summary"})
        queries = training_queries(records, result, config.negative_depth)
        if not queries:
            raise TrainingError(f"iteration {t}: no query has a positive to train on")
        views = {q.query_id: q for q in queries}
        teacher = {(r.query_id, c.docid): float(c.teacher_score) for r in records for c in r.candidates() if c.teacher_score is not None}
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

        batches_per_epoch = len(plan_epoch(queries, config, t, 0))
        total_micro = batches_per_epoch * config.epochs
        total_steps = math.ceil(total_micro / config.accumulation_steps)
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)
        checkpoint = self.iter_dir(t) / "checkpoint"
        resumed = (checkpoint / TRAINER_STATE_FILE).is_file()
        student = DualEncoder.from_pretrained(checkpoint if resumed else self.student_dir(t - 1), device=config.device)
        view = student
        if config.train_passage_length:
            view = DualEncoder(student.model, student.tokenizer,
                               student.config.model_copy(update={"max_passage_length": config.train_passage_length}), student.source)
        from transformers import get_linear_schedule_with_warmup

        optimizer = torch.optim.AdamW(student.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup * total_steps), total_steps)
        step = 0
        if resumed:
            saved = torch.load(checkpoint / TRAINER_STATE_FILE, weights_only=False, map_location="cpu")
            if saved["iteration"] != t:
                raise TrainingError(f"{checkpoint}: a checkpoint of iteration {saved['iteration']}, not {t}")
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            if saved.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
            step = saved["step"]
            logger.info("iteration %d: resuming training at step %d of %d", t, step, total_steps)
        else:
            torch.manual_seed(config.seed * 1_000 + t)
        _truncate_log(self.out / "log.jsonl", t, step)
        loss_fn = MD2PRLoss(
            config.contrastive_weight, config.sentence_weight, config.word_weight, config.tau,
            config.kd_teacher_temperature, config.kd_student_temperature, config.word_temperature, config.word_normalize,
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
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(student.model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            line = {"iteration": t, "step": step, "epoch": (first // batches_per_epoch),
                    **{k: round(v, 5) for k, v in sums.items()}, "word_pairs": n_word,
                    "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - started, 2)}
            with (self.out / "log.jsonl").open("a") as log:
                log.write(json.dumps(line) + "\n")
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
        _replace_dir(tmp, self.iter_dir(t) / "student")
        shutil.rmtree(checkpoint, ignore_errors=True)
        losses = [json.loads(x) for x in (self.out / "log.jsonl").read_text().splitlines() if x.strip()]
        mine_ = [x for x in losses if x["iteration"] == t]
        tail = mine_[-max(1, len(mine_) // 5):]
        self._record(t, "train", {
            "steps": total_steps, "queries": len(queries),
            "final_losses": {k: round(float(np.mean([x[k] for x in tail if k in x])), 5)
                             for k in ("loss", "contrastive", "sentence_kd", "word_kd") if any(k in x for x in tail)},
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
        tmp = checkpoint.with_name("checkpoint.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(tmp)
        torch.save(
            {"iteration": t, "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            tmp / TRAINER_STATE_FILE,
        )
        _write_json(tmp / CHECKPOINT_CONFIG_FILE, self._config_record())
        _replace_dir(tmp, checkpoint)

    # ---- phase 5: evaluate
    def _evaluate(self, t: int) -> None:
        started = time.monotonic()
        student = DualEncoder.from_pretrained(self.student_dir(t), device=self.config.device)
        build_student_index(student, self.fit.corpus_path, self.index_dir(t), self.config.encode_batch_size, self.show_progress)
        retriever = Retriever.open(self.index_dir(t), reuse_encoder=student)
        try:
            metrics = evaluate_dev(retriever, self.dev, self.config.dev_depth, self.config.relevance_level)
        finally:
            retriever.close()
        self._record(t, "dev", metrics, time.monotonic() - started)
        self._record(t, "student", {"dir": self.student_dir(t), "fingerprint": student.fingerprint})
        self._save_state()
        lines = [json.dumps(self.state["iterations"][k]) for k in sorted(self.state["iterations"], key=int)
                 if "dev" in self.state["iterations"][k]]
        (self.out / "iterations.jsonl").write_text("".join(line + "\n" for line in lines))
        logger.info("iteration %d: %s:dev %s (base student: %s)", t, self.config.split, metrics, self.state["base_dev"])

    def _finish(self) -> dict[str, Any]:
        done = [self.state["iterations"][str(t)] for t in range(1, self.config.iterations + 1)]
        chosen = done[-1]
        if self.config.select == "best" and all(d.get("dev") for d in done):
            chosen = max(done, key=lambda d: (d["dev"]["nDCG@10"], d["iteration"]))
        model = self.out / "model"
        if not (model / "encoder_config.json").is_file() or self.state.get("selected") != chosen["iteration"]:
            tmp = self.out / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(chosen["student"]["dir"], tmp)
            _replace_dir(tmp, model)
            self.state["selected"] = chosen["iteration"]
            self._save_state()
        report = {
            "finished": True,
            "output_dir": str(self.out),
            "model": str(model),
            "selected_iteration": chosen["iteration"],
            "select": self.config.select,
            "base_dev": self.state["base_dev"],
            "iterations": done,
            "config": self.config.to_dict(),
        }
        _write_json(self.out / "report.json", report)
        logger.info("distilled student: %s (iteration %d, dev %s)", model, chosen["iteration"], chosen.get("dev"))
        return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _truncate_log(path: Path, iteration: int, step: int) -> None:
    """Keep the log lines of earlier iterations and of this one up to ``step`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if entry["iteration"] < iteration or (entry["iteration"] == iteration and entry["step"] <= step):
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


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
    """The per-step lines of a run's ``log.jsonl``."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
