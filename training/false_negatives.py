"""Dynamic false-negative filtering: which mined negatives the teacher thinks are relevant.

Mining takes each source's top-k minus the *labelled* positives, but judgements are sparse: a
relevant passage nobody judged comes back as a "hard negative", and training the student to
push it away teaches it the wrong thing. The teacher reads query and passage together, so a
negative it scores like a positive is a suspected false negative.

The threshold (DESIGN.md, "Dynamic false-negative filtering"), recomputed every iteration from
that iteration's annotated candidates:

- a **global floor**: the ``percentile``-th percentile of the teacher's scores on every labelled
  positive (``percentile=10``: a negative must score above what 90% of true positives score);
- a **per-query relative margin**: with ``best`` the query's highest labelled-positive score and
  ``gap = max(best - median(its negatives' scores), 0)``, the query's bar is
  ``best - margin * gap`` (``margin=0.1``: within 10% of the way from the typical candidate to
  the positive). The margin is relative to the query's own score spread, so it means the same
  for raw cross-encoder logits and for fused z-scores.

A negative is flagged when its teacher score is strictly above ``max(floor, best - margin * gap)``
(both tests must agree). That is ``rule="gap"`` (the default).

``rule="ratio"`` is the positive-aware rule of NV-Retriever (TopK-PercPos: drop a negative
scored above ``ratio`` times its own query's positive), made scale-free for logits and z-scores,
which can be negative: scores are read as the teacher's list distribution ``softmax(score)``
(the one sentence KD distils at temperature 1), and a negative is flagged when it holds more
than ``ratio`` times the best positive's probability, ``exp(s_neg - s_best) > ratio``, i.e.
``s_neg > best + ln(ratio)``. No global floor: each query is judged by its own positive only.
``score="cross_encoder"`` applies either rule to the cross-encoder's raw score instead of the
teacher score (the fused one, when the teacher has fitted fusion weights): the first-stage half
of a fused score rates every mined negative high by construction. Labelled positives are never flagged or dropped: they are not
candidates of the test. Flagged negatives are dropped, or (``action="positive"``) counted as
positives. The candidate lists change every iteration (the current student mines them, and a
fused teacher's z-scores are relative to the list), so the thresholds follow the models.

**Unlabelled queries** (no judgement at all; see :func:`with_pseudo_positive`) train with the
teacher's best candidate as their positive: it takes the place of the labelled positive in the
per-query margin (so only near-ties with it are flagged) but never in the global floor, which is
placed by judgements alone.

``mode="static"`` uses one fixed threshold for every query and iteration (``static_threshold``,
or the first iteration's floor, frozen); ``mode="none"`` flags nothing. Everything here is
pure: records in, decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from .data import Candidate, TrainingRecord
from .errors import TrainingError

FilterMode = Literal["dynamic", "static", "none"]
FilterAction = Literal["drop", "positive"]
FilterRule = Literal["gap", "ratio"]
FilterScore = Literal["teacher", "cross_encoder"]


@dataclass(frozen=True)
class FilterConfig:
    """Settings of the false-negative filter (saved with the training config)."""

    mode: FilterMode = "dynamic"
    percentile: float = 10.0
    margin: float = 0.1
    static_threshold: float | None = None  # mode "static": this value, or the first iteration's floor
    action: FilterAction = "drop"
    rule: FilterRule = "gap"  # mode "dynamic": gap (floor + margin of the gap to the median) | ratio (NV-Retriever)
    ratio: float = 0.95  # rule "ratio": flag when exp(s_neg - s_best) > ratio
    score: FilterScore = "teacher"  # which score the rule reads: the teacher score | the cross-encoder alone

    def __post_init__(self) -> None:
        if self.mode not in ("dynamic", "static", "none"):
            raise TrainingError(f"filter mode must be dynamic, static or none, not {self.mode!r}")
        if self.action not in ("drop", "positive"):
            raise TrainingError(f"filter action must be drop or positive, not {self.action!r}")
        if not 0.0 <= self.percentile <= 100.0:
            raise TrainingError(f"filter percentile must be in [0, 100], got {self.percentile}")
        if self.margin < 0:
            raise TrainingError(f"filter margin must be >= 0, got {self.margin}")
        if self.rule not in ("gap", "ratio"):
            raise TrainingError(f"filter rule must be gap or ratio, not {self.rule!r}")
        if not 0.0 < self.ratio:
            raise TrainingError(f"filter ratio must be > 0, got {self.ratio}")
        if self.score not in ("teacher", "cross_encoder"):
            raise TrainingError(f"filter score must be teacher or cross_encoder, not {self.score!r}")


def global_floor(positive_scores: Iterable[float], percentile: float) -> float:
    """The ``percentile``-th percentile of the teacher's scores on labelled positives."""
    values = np.asarray(list(positive_scores), dtype=np.float64)
    if values.size == 0:
        raise TrainingError("no labelled positive has a teacher score: cannot place the false-negative threshold")
    return float(np.percentile(values, percentile))


def query_threshold(floor: float, positive_scores: Sequence[float], negative_scores: Sequence[float], margin: float) -> float:
    """One query's threshold: ``max(floor, best - margin * max(best - median(negatives), 0))``.

    Without labelled positives (nothing to compare with) or negatives it is the floor alone.
    """
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return floor
    best = float(np.max(positive_scores))
    gap = max(best - float(np.median(negative_scores)), 0.0)
    return max(floor, best - margin * gap)


def ratio_threshold(positive_scores: Sequence[float], ratio: float) -> float | None:
    """The ``rule="ratio"`` bar of one query: ``best + ln(ratio)`` (``exp(s - best) > ratio`` above
    it); ``None`` (flag nothing) without a positive to compare with."""
    if len(positive_scores) == 0:
        return None
    return float(np.max(positive_scores)) + float(np.log(ratio))


@dataclass
class FilterResult:
    """The decisions of one iteration, and what the log needs.

    ``thresholds``: per query id, the threshold used (empty with ``mode="none"``);
    ``flagged``: per query id, the flagged negatives' docids (queries without any are absent).
    """

    mode: FilterMode
    action: FilterAction
    floor: float | None
    thresholds: dict[str, float]
    flagged: dict[str, list[str]]
    negatives: int
    labelled_positives: int

    @property
    def flagged_count(self) -> int:
        return sum(len(v) for v in self.flagged.values())

    def summary(self) -> dict:
        """JSON-ready numbers for the iteration log (threshold and how many negatives it removed)."""
        finite = np.array(list(self.thresholds.values()), dtype=np.float64)
        return {
            "mode": self.mode,
            "action": self.action,
            "floor": self.floor,
            "threshold_min": float(finite.min()) if finite.size else None,
            "threshold_median": float(np.median(finite)) if finite.size else None,
            "threshold_max": float(finite.max()) if finite.size else None,
            "negatives": self.negatives,
            "flagged": self.flagged_count,
            "flagged_fraction": self.flagged_count / self.negatives if self.negatives else 0.0,
            "queries_with_flags": len(self.flagged),
            "labelled_positives": self.labelled_positives,
        }

    def to_json(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


def with_pseudo_positive(record: TrainingRecord) -> TrainingRecord:
    """An unlabelled query's record with the teacher's best-scored negative moved to its positives.

    A record mined for an unlabelled query has no positives; distillation trains it with the
    candidate the teacher scores highest as the positive (its ``relevance`` stays 0: it is the
    teacher's label, not a judgement). Ties go to the better-ranked candidate (the negatives'
    order). Records with positives, or without negatives, are returned unchanged.
    """
    if record.positives or not record.negatives:
        return record
    scores = [candidate_score(c, record) for c in record.negatives]
    best = int(np.argmax(scores))  # first of equal maxima
    negatives = list(record.negatives)
    positive = negatives.pop(best)
    return record.model_copy(update={"positives": [positive], "negatives": negatives})


def candidate_score(candidate: Candidate, record: TrainingRecord, which: FilterScore = "teacher") -> float:
    """The score the filter reads of ``candidate`` (one of ``record``'s): the teacher score, or the
    cross-encoder's alone; :class:`TrainingError` if it was never annotated."""
    value = candidate.teacher_score if which == "teacher" else candidate.cross_encoder_score
    if value is None:
        raise TrainingError(f"query {record.query_id}: candidate {candidate.docid} has no {which}_score (annotate first)")
    return float(value)


def filter_false_negatives(
    records: Sequence[TrainingRecord], config: FilterConfig, frozen_threshold: float | None = None
) -> FilterResult:
    """Decide, for every mined negative of every record, whether it is a suspected false negative.

    ``frozen_threshold`` is the static mode's value when ``config.static_threshold`` is unset
    (the trainer passes the first iteration's floor). Labelled positives are never flagged.
    """
    n_negatives = sum(len(r.negatives) for r in records)
    if config.mode == "none":  # needs no teacher scores (a run without a teacher filters nothing)
        n_positives = sum(1 for r in records for c in r.positives if c.relevance > 0)
        return FilterResult("none", config.action, None, {}, {}, n_negatives, n_positives)
    which = config.score
    positives = [candidate_score(c, r, which) for r in records for c in r.positives if c.relevance > 0]
    ratio = config.mode == "dynamic" and config.rule == "ratio"
    floor = None if ratio else global_floor(positives, config.percentile)
    thresholds: dict[str, float] = {}
    flagged: dict[str, list[str]] = {}
    for record in records:
        negative_scores = [candidate_score(c, record, which) for c in record.negatives]
        positive_scores = [candidate_score(c, record, which) for c in record.positives]  # labelled, or the pseudo-positive
        if config.mode == "static":
            threshold = config.static_threshold if config.static_threshold is not None else frozen_threshold
            threshold = floor if threshold is None else threshold
        elif ratio:
            threshold = ratio_threshold(positive_scores, config.ratio)
            if threshold is None:
                continue
        else:
            threshold = query_threshold(floor, positive_scores, negative_scores, config.margin)
        thresholds[record.query_id] = float(threshold)
        hits = [c.docid for c, s in zip(record.negatives, negative_scores) if s > threshold]
        if hits:
            flagged[record.query_id] = hits
    if config.mode == "static":
        floor = next(iter(thresholds.values()), floor)
    return FilterResult(config.mode, config.action, None if floor is None else float(floor), thresholds, flagged,
                        n_negatives, len(positives))


@dataclass(frozen=True)
class FilteredQuery:
    """What training uses of one record after filtering.

    ``positives``: docids trained as positives (labelled, plus flagged negatives with
    ``action="positive"``); ``negatives``: the negatives kept; ``excluded``: docids that must
    not count as negatives of this query anywhere in a batch (the dropped ones).
    """

    query_id: str
    query: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    excluded: frozenset[str] = field(default_factory=frozenset)


def apply_filter(record: TrainingRecord, flagged: Iterable[str], action: FilterAction) -> FilteredQuery:
    """The training view of ``record`` after removing (or promoting) its ``flagged`` negatives.

    Positives (labelled, or an unlabelled query's pseudo-positive) stay positives whatever
    ``flagged`` says.
    """
    labelled = tuple(c.docid for c in record.positives)
    flagged_set = set(flagged) - set(labelled)
    kept = tuple(c.docid for c in record.negatives if c.docid not in flagged_set)
    promoted = tuple(c.docid for c in record.negatives if c.docid in flagged_set)
    if action == "positive":
        return FilteredQuery(record.query_id, record.query, labelled + promoted, kept, frozenset())
    return FilteredQuery(record.query_id, record.query, labelled, kept, frozenset(promoted))


def flag_quality(flagged: Mapping[str, Sequence[str]], hidden: Mapping[str, set[str]], records: Sequence[TrainingRecord]) -> dict:
    """Precision and recall of the flags against positives hidden from the qrels on purpose.

    ``hidden``: per query id, the judged-relevant docids removed before mining. Only hidden
    positives that mining returned as negatives can be flagged, so recall is over those.
    """
    mined_hidden = {(r.query_id, c.docid) for r in records for c in r.negatives if c.docid in hidden.get(r.query_id, ())}
    flags = {(q, d) for q, docids in flagged.items() for d in docids}
    true = len(flags & mined_hidden)
    return {
        "hidden_positives": sum(len(v) for v in hidden.values()),
        "hidden_mined_as_negatives": len(mined_hidden),
        "flagged": len(flags),
        "flagged_hidden": true,
        "precision": true / len(flags) if flags else None,
        "recall": true / len(mined_hidden) if mined_hidden else None,
    }
