"""The experiment configuration: one JSON file per dataset (``pipeline/configs/<name>.json``).

Schema (every key but ``name``, ``train``, ``eval`` and ``budgets`` has a default)::

    {
      "name": "scifact",                       # run directory: <artifacts>/experiments/<name>-<budget>
      "description": "...",                    # one line for the report and the model card
      "train": {"dataset": "scifact", "split": "train"},   # teacher and student training queries
      "eval": {"dataset": "scifact", "split": "test", "relevance_level": 1, "depth": 1000},
      "student": "builtin:all-MiniLM-L6-v2",  # the base student S_0 (a model directory or builtin)
      "mining_depth": 30,                      # md2pr-mine top-k per source (the teacher's training file)
      "rerank_depth": 100,                     # first-stage hits the teacher reranks in evaluation
      "first_stage_runs": {"bm25-published": "msmarco_trec_dl/dl19/BM25/trec_results_dl19.txt"},
      "variants": {"md2pr": {}, "no-word-kd": {"word_weight": 0}, ...},  # DistillConfig overrides
      "main_variant": "md2pr",                 # the student that is indexed, served and carded
      "filter_check": {"hide_positives": 0.2}, # a run that hides positives (null: none)
      "references": [{"system": "...", "metrics": {"nDCG@10": 0.665}, "source": "..."}],
      "licence": "...",                        # of the training data, for the model card
      "budgets": {
        "cpu": {"teacher": {"preset": "cpu", "overrides": {}},
                "distill": {"preset": "cpu", "overrides": {"iterations": 1}},
                "seeds": [0]},
        "gpu": {...}
      }
    }

Keys starting with ``_`` are comments. Dataset paths are relative to the data directory (``$MD2PR_DATA_DIR``, default
``../shared/data``) unless absolute. Overrides are flags of ``md2pr-train-teacher`` /
``md2pr-distill`` written as their setting names (``"max_steps": 40``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval.jsonio import validate_json_object
from retrieval.paths import BUILTIN_MODEL, data_dir

from .errors import PipelineError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetRef(_Strict):
    """A dataset directory and a qrels split of it."""

    dataset: str
    split: str
    relevance_level: int = Field(1, ge=1, description="minimum grade counted relevant: by MRR and recall (eval), "
                                 "trained as a positive (train)")
    depth: int = Field(1000, ge=1, description="hits retrieved per query in evaluation")
    unseen_from: str | None = Field(None, description="eval: also measure every system on the queries none of whose "
                                    "positives is a positive of this split (md2pr-evaluate --unseen-from)")

    def path(self) -> Path:
        """The dataset directory: absolute as given, else under the data directory."""
        given = Path(self.dataset)
        return given if given.is_absolute() else data_dir() / given


class JobSettings(_Strict):
    """A preset of an offline job and the settings that override it."""

    preset: str = "cpu"
    overrides: dict[str, Any] = Field(default_factory=dict)


class Budget(_Strict):
    """Step sizes for one kind of machine."""

    teacher: JobSettings = Field(default_factory=JobSettings)
    distill: JobSettings = Field(default_factory=JobSettings)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    threads: int | None = Field(None, ge=1, description="torch/FAISS threads of every step (default: all cores)")


class Reference(_Strict):
    """A published figure shown beside the measured ones (never measured here)."""

    system: str
    metrics: dict[str, float]
    source: str


class ExperimentConfig(_Strict):
    """One dataset's experiment (see the module docstring for the file format)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    train: DatasetRef
    eval: DatasetRef
    student: str = BUILTIN_MODEL
    mining_depth: int = Field(30, ge=1)
    rerank_depth: int = Field(100, ge=1)
    first_stage_runs: dict[str, str] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "md2pr": {},
            "no-word-kd": {"word_weight": 0},
            "no-sentence-kd": {"sentence_weight": 0},
            "static-threshold": {"filter_mode": "static"},
            "no-filter": {"filter_mode": "none"},
        }
    )
    main_variant: str = "md2pr"
    filter_check: dict[str, Any] | None = Field(default_factory=lambda: {"hide_positives": 0.2})
    references: list[Reference] = Field(default_factory=list)
    licence: str = ""
    budgets: dict[str, Budget]

    @model_validator(mode="before")
    @classmethod
    def _drop_comments(cls, data: Any) -> Any:
        """Keys starting with ``_`` are comments (``"_comment": "why these sizes"``)."""
        return {k: v for k, v in data.items() if not k.startswith("_")} if isinstance(data, dict) else data

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("filter-check"):
                raise ValueError(f"variant name {name!r}: letters, digits, '-', '_' or '.', not 'filter-check'")
        return value

    @field_validator("first_stage_runs")
    @classmethod
    def _run_names(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 1:
            raise ValueError("at most one published first-stage run (md2pr-evaluate reranks one 'run' stage)")
        return value

    @model_validator(mode="after")
    def _main_variant_exists(self) -> ExperimentConfig:
        if self.main_variant not in self.variants:
            raise ValueError(f"main_variant {self.main_variant!r} is not one of the variants ({', '.join(self.variants)})")
        return self

    def same_corpus(self) -> bool:
        """Whether training and evaluation search the same corpus (one base index serves both)."""
        return self.train.path().resolve() == self.eval.path().resolve()

    def run_path(self, name: str) -> Path:
        """A first-stage run file (``first_stage_runs``) under the data directory unless absolute."""
        given = Path(self.first_stage_runs[name])
        return given if given.is_absolute() else data_dir() / given


def shipped_configs() -> list[str]:
    """Names of the configurations in ``pipeline/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(spec: str | Path) -> tuple[ExperimentConfig, Path]:
    """A shipped configuration by name (``scifact``) or a JSON file path; returns it and its file."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{spec}.json"
        if not path.is_file():
            raise PipelineError(f"no experiment configuration {spec!r} (shipped: {', '.join(shipped_configs())}; or give a JSON file)")
    return validate_json_object(path, ExperimentConfig, error=PipelineError, missing="no such configuration file"), path
