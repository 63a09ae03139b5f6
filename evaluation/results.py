"""The results JSON of ``md2pr-evaluate --output``, as pydantic models: written and read through them.

``md2pr-evaluate`` validates its report against :class:`EvaluationReport` before writing it, and
readers (the experiment report in :mod:`pipeline.report`) validate what they read, so a renamed
or missing key is an error naming the field rather than a blank table cell. Keys beyond the
ones modelled here are kept (``extra="allow"``): the per-system ``config`` differs by system.

Format (one file per run of the command)::

    {"command": str, "machine": {"cpus": int, "threads": int, ...}, "dataset": str, "split": str,
     "queries": int, "depth": int, "relevance_level": int,
     ["unseen_positive": {"from": split, "queries": int}],
     "systems": {name: {"metrics": {measure: value}, ["metrics_unseen": {...}], "config": {...},
                        "seconds": float, ["omitted_metrics": [measure, ...]],
                        ["kind": "rerank", "rerank": RerankInfo]}}}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Machine(_Open):
    """Where the figures were measured: CPU cores of the machine, threads the job used."""

    cpus: int | None = None
    threads: int | None = None


class RerankInfo(_Open):
    """How a rerank system was made (``md2pr-evaluate --rerank``; :mod:`evaluation.rerank`).

    ``pairs``: (query, passage) pairs newly scored (not from the score cache or an earlier stage);
    ``seconds_per_pair``: cross-encoder time per such pair, ``None`` when every pair was cached.
    """

    first_stage: str
    depth: int
    pairs: int
    scoring_seconds: float
    seconds_per_pair: float | None
    cross_encoder: dict[str, Any]
    score: Literal["cross_encoder", "fused"]
    fusion: dict[str, Any] | None = None


class SystemResult(_Open):
    """One system's figures: metrics at the report's depth (``omitted_metrics``: measures deeper
    than it could retrieve), its configuration and wall time in seconds."""

    metrics: dict[str, float]
    metrics_unseen: dict[str, float] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    seconds: float | None = None
    omitted_metrics: list[str] = Field(default_factory=list)
    kind: Literal["rerank"] | None = None
    rerank: RerankInfo | None = None

    @property
    def is_rerank(self) -> bool:
        return self.kind == "rerank"


class UnseenPositive(_Open):
    from_split: str = Field(alias="from")
    queries: int


class EvaluationReport(_Open):
    """The whole ``--output`` JSON (format in the module docstring)."""

    command: str
    machine: Machine
    dataset: str
    split: str
    queries: int
    depth: int
    relevance_level: int = 1
    unseen_positive: UnseenPositive | None = None
    systems: dict[str, SystemResult]

    def system(self, name: str) -> SystemResult | None:
        """The system ``name``, or the only system when the name differs; ``None`` otherwise."""
        if name in self.systems:
            return self.systems[name]
        return next(iter(self.systems.values())) if len(self.systems) == 1 else None

    def depth_of(self, system: SystemResult) -> int:
        """The depth a system was scored at: the report's, or less where a service clamped it
        (its ``config.depth``)."""
        used = system.config.get("depth")
        return min(self.depth, used) if isinstance(used, int) else self.depth
