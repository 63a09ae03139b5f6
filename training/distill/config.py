"""Distillation settings: :class:`DistillConfig` (every setting of a run, validated) and the
constants naming a run directory's files and phases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import TrainingError, check_settings
from ..false_negatives import FilterConfig

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
    "title_queries",
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
    teacher: str = ""  # cross-encoder directory (md2pr-train-teacher's model/); "" only for a run without a teacher
    student: str = "builtin:all-MiniLM-L6-v2"  # the base student S_0
    base_index: str | None = None  # an existing Flat index of the base student (skips encoding the corpus once)
    teacher_fusion: bool = True  # the teacher's fused score when its config has fitted weights
    teacher_index: str | None = None  # index of the fusion's dense encoder, if it is not the base student
    max_queries: int | None = None  # train on the first N <split>:fit queries only (smoke runs, budgets)
    first_iteration_from: str | None = None  # another run directory: take its iteration 1 mining and annotation
    # unlabelled queries: topic sets of a TREC DL dataset (e.g. dl21 dl22) whose unjudged queries
    # (or "corpus-titles": each passage's title as a pseudo-query, GPL-style)
    # train with the teacher's labels (its best candidate is the positive; see training.false_negatives)
    unlabelled_queries: tuple[str, ...] = ()
    max_unlabelled: int | None = None  # the first N unlabelled queries only (budgets)
    # N passage titles of the corpus as labelled pseudo-queries, each with its own passage as the
    # positive (Inverse-Cloze-like; no teacher needed): every passage can be a positive, not only
    # those the judged queries point at (see training.distill.datasets.title_queries)
    title_queries: int = 0
    # other run directories whose annotated files (every iteration) lend their cross-encoder scores
    # to this run's annotation (same teacher and dataset only; the run's own earlier iterations
    # always do): only the pairs nobody scored yet cost teacher time. Results do not depend on it.
    score_cache_from: tuple[str, ...] = ()
    # which tower trains: "both" (shared weights, both towers; the corpus is re-encoded after each
    # iteration) or "query" (the passage vectors stay the base index's, a frozen bank every query is
    # contrasted against in full; the published index stays valid; see training.distill.bank)
    train_tower: str = "both"
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
    kd_loss: str = "kl"  # the sentence-KD term: "kl" over the list | "margin_mse" over its pairs (training.losses)
    kd_score: str = "teacher"  # what sentence KD distils: "teacher" (the fused score when fitted) | "cross_encoder" alone
    kd_in_batch: bool = False  # sentence KD over in-batch passages too (the teacher scores them online)
    word_temperature: float = 0.05
    word_normalize: bool = True  # cosine token similarities in the student's matching matrix
    # false-negative filtering
    filter_mode: str = "dynamic"  # dynamic | static | none
    filter_percentile: float = 10.0
    filter_margin: float = 0.1
    static_threshold: float | None = None  # static mode: this value, or iteration 1's floor frozen
    filter_action: str = "drop"  # drop | positive
    filter_rule: str = "gap"  # dynamic mode: gap (floor + margin) | ratio (NV-Retriever-style, see training.false_negatives)
    filter_ratio: float = 0.95  # rule "ratio": flag a negative with exp(s_neg - s_positive) > this
    filter_score: str = "teacher"  # the score the filter reads: teacher (fused when fitted) | cross_encoder
    hide_positives: float = 0.0  # hide this fraction of training positives from the qrels (filter check)
    # the rest
    train_passage_length: int | None = None  # truncate passages shorter while training (the saved model keeps its own)
    encode_batch_size: int = 32
    dev_depth: int = 100
    select: str = "best"  # best (dev nDCG@10; the base student, iteration 0, takes part) | last
    select_on: str = "dev"  # dev | dev-unseen (dev queries whose positives no fit query has) | dev-mean
    query_length: int | None = None  # truncate queries shorter while training (the saved model keeps its own)
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
            "title_queries": self.title_queries >= 0,
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
            "select_on": self.select_on in ("dev", "dev-unseen", "dev-mean"),
            "kd_score": self.kd_score in ("teacher", "cross_encoder"),
            "kd_loss": self.kd_loss in ("kl", "margin_mse"),
            "train_tower": self.train_tower in ("both", "query"),
            "query_length": self.query_length is None or self.query_length >= 8,
            "save_every": self.save_every >= 1,
        }
        for name in ("contrastive_weight", "sentence_weight", "word_weight"):
            checks[name] = getattr(self, name) >= 0
        check_settings("distillation", self, checks)
        if not self.teacher and self.needs_teacher:
            raise TrainingError("no teacher given (--teacher: a cross-encoder directory from md2pr-train-teacher); "
                                "only a supervised run (no sentence or word KD, --no-filter, no unlabelled queries) trains without one")
        if self.contrastive_weight == self.sentence_weight == self.word_weight == 0:
            raise TrainingError("every loss weight is 0: nothing to train")
        if self.train_tower == "query" and self.word_weight > 0:
            raise TrainingError("train_tower='query' keeps the passage tower frozen: word-level KD needs its token states (word_weight=0)")
        if self.train_tower == "query" and self.kd_in_batch:
            raise TrainingError("train_tower='query' distils over each query's annotated list; kd_in_batch does not apply")
        if self.train_tower == "both" and self.negatives == 0 and self.queries_per_batch == 1:
            raise TrainingError("a micro-batch of one query without hard negatives has nothing to contrast")
        self.filter_config()  # validates the filter settings

    @property
    def needs_teacher(self) -> bool:
        """Whether any phase reads the teacher: KD, the false-negative filter, unlabelled queries' labels."""
        return self.sentence_weight > 0 or self.word_weight > 0 or self.filter_mode != "none" or bool(self.unlabelled_queries)

    def filter_config(self) -> FilterConfig:
        return FilterConfig(
            mode=self.filter_mode,  # type: ignore[arg-type]
            percentile=self.filter_percentile,
            margin=self.filter_margin,
            static_threshold=self.static_threshold,
            action=self.filter_action,  # type: ignore[arg-type]
            rule=self.filter_rule,  # type: ignore[arg-type]
            ratio=self.filter_ratio,
            score=self.filter_score,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attention_layers"] = list(self.attention_layers)
        data["unlabelled_queries"] = list(self.unlabelled_queries)
        data["score_cache_from"] = list(self.score_cache_from)
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
        for name in ("unlabelled_queries", "score_cache_from"):
            if name in values:
                values[name] = tuple(str(x) for x in values[name])
        return cls(**values)

