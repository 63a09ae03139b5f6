"""Evaluation with ir-measures, and TREC run files.

Metric maths is ir-measures' (pytrec_eval underneath); this module only decides *which*
queries are averaged and how results are named:

- Every query id in the qrels is evaluated. A query with qrels but absent from the run (or
  with an empty ranking) scores 0 on every measure; this is trec_eval's ``-c`` convention,
  applied here explicitly rather than left to the provider's defaults. Run queries that have
  no qrels are ignored. A qrels query with no relevant document scores 0.
- Relevance ``>= relevance_level`` (default 1) counts as relevant for binary measures
  (R@k, RR@k); for graded collections such as TREC DL the convention is ``relevance_level=2``.
  nDCG always uses the graded relevance values as gains.
- Rankings are derived from scores; ties between equal scores are broken as trec_eval does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import fmean

import ir_measures
from ir_measures import RR, R, nDCG
from ir_measures.measures import Measure

from retrieval.errors import DatasetFormatError
from retrieval.tables import markdown_table
from retrieval.types import Qrels, Run

#: Display name -> ir-measures measure. ``MRR@10`` is ir-measures' ``RR@10`` averaged.
DEFAULT_MEASURES: dict[str, Measure] = {
    "nDCG@10": nDCG @ 10,
    "MRR@10": RR @ 10,
    "R@50": R @ 50,
    "R@100": R @ 100,
    "R@1000": R @ 1000,
}

MeasureSpec = Mapping[str, Measure | str] | Iterable[Measure | str]


def _resolve(measures: MeasureSpec, relevance_level: int) -> dict[str, Measure]:
    """Display name -> measure, with ``rel=relevance_level`` applied where a measure takes it.

    A mapping keeps its names; a sequence of measures or strings (``"nDCG@10"``) is named
    by each measure's ir-measures string.
    """
    if relevance_level < 1:
        raise ValueError(f"relevance_level must be >= 1, got {relevance_level}")
    items = measures.items() if isinstance(measures, Mapping) else ((str(m), m) for m in measures)
    resolved: dict[str, Measure] = {}
    for name, measure in items:
        if isinstance(measure, str):
            measure = ir_measures.parse_measure(measure)
        if relevance_level != 1 and "rel" in measure.SUPPORTED_PARAMS:
            measure = measure(rel=relevance_level)
        resolved[name] = measure
    if not resolved:
        raise ValueError("no measures given")
    return resolved


def per_query(
    qrels: Qrels,
    run: Run,
    measures: MeasureSpec = DEFAULT_MEASURES,
    relevance_level: int = 1,
) -> dict[str, dict[str, float]]:
    """Per-query values ``{query_id: {display name: value}}`` for every query in ``qrels``.

    Queries missing from ``run`` get 0 for every measure (see the module docstring).
    """
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate")
    named = _resolve(measures, relevance_level)
    names_of: dict[Measure, list[str]] = {}
    for name, measure in named.items():
        names_of.setdefault(measure, []).append(name)

    qrels_in = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_in = {
        str(q): {str(d): float(s) for d, s in docs.items()}
        for q, docs in run.items()
        if str(q) in qrels_in and docs
    }
    results = {qid: dict.fromkeys(named, 0.0) for qid in qrels_in}
    for metric in ir_measures.iter_calc(list(names_of), qrels_in, run_in):
        if metric.query_id in results:
            for name in names_of[metric.measure]:
                results[metric.query_id][name] = float(metric.value)
    return results


def evaluate_run(
    qrels: Qrels,
    run: Run,
    measures: MeasureSpec = DEFAULT_MEASURES,
    relevance_level: int = 1,
) -> dict[str, float]:
    """Mean of each measure over all queries in ``qrels``, keyed by display name.

    ``measures`` is a mapping display name -> measure (default :data:`DEFAULT_MEASURES`) or a
    sequence of ir-measures measures / strings. Queries with qrels but no ranking count as 0;
    relevance ``>= relevance_level`` is relevant for R@k and RR@k.
    """
    rows = per_query(qrels, run, measures, relevance_level)
    names = list(next(iter(rows.values())))
    return {name: fmean(row[name] for row in rows.values()) for name in names}


def _ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents by score descending, ties broken by docid ascending."""
    return sorted(docs.items(), key=lambda item: (-item[1], item[0]))


def write_trec_run(path: str | os.PathLike[str], run: Run, tag: str) -> None:
    """Write ``run`` as a 6-column TREC run file: ``qid Q0 docid rank score tag`` per line.

    Queries are written in the run's order; within a query, documents by score descending
    (ties by docid ascending) with 1-based ranks. Scores are written with full precision,
    so :func:`read_trec_run` returns the same run. Ids and tag must not contain whitespace.
    """
    checks = [(tag, "tag")] + [(q, "query id") for q in run]
    checks += [(d, "docid") for docs in run.values() for d in docs]
    for value, what in checks:
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"{what} {value!r} is empty or contains whitespace")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for qid, docs in run.items():
            for rank, (docid, score) in enumerate(_ranked(docs), start=1):
                f.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")


def read_trec_run(path: str | os.PathLike[str]) -> Run:
    """Read a 6-column TREC run file (``qid Q0 docid rank score tag``) into a :data:`Run`.

    Scores define the ranking; the rank column is checked to be an integer but not used.
    Blank lines are skipped. A malformed line (wrong column count, non-numeric rank or
    score, a repeated ``(qid, docid)``) raises :class:`DatasetFormatError` naming ``file:line``.
    (``ir_measures.read_trec_run`` reads the same format but skips blank lines without counting
    them, names no line, and accepts repeated pairs, NaN scores and any rank: kept by hand so a bad
    published run is refused at its line rather than scored.)
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: run file not found")
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            if len(fields) != 6:
                raise DatasetFormatError(
                    f"{where}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}"
                )
            qid, _, docid, rank, score, _ = fields
            try:
                int(rank)
                value = float(score)
            except ValueError:
                raise DatasetFormatError(
                    f"{where}: rank {rank!r} or score {score!r} is not a number"
                ) from None
            if math.isnan(value):
                raise DatasetFormatError(f"{where}: score is NaN")
            docs = run.setdefault(qid, {})
            if docid in docs:
                raise DatasetFormatError(f"{where}: docid {docid!r} repeated for query {qid!r}")
            docs[docid] = value
    return run


def format_table(rows: Mapping[str, Mapping[str, float]], name_header: str = "system") -> str:
    """A markdown table, one row per system, metric columns in first-seen order, 4 decimals.

    ``rows`` is ``{system name: {metric display name: value}}``; a missing value is left blank.
    """
    columns: list[str] = []
    for metrics in rows.values():
        columns += [c for c in metrics if c not in columns]
    header = [name_header, *columns]
    body = [
        [name, *(f"{metrics[c]:.4f}" if c in metrics else "" for c in columns)]
        for name, metrics in rows.items()
    ]
    return "\n".join(markdown_table(header, body, "l" + "r" * len(columns), pad=True))


def unseen_positive_queries(qrels: Qrels, seen: Qrels, relevance_level: int = 1) -> list[str]:
    """The queries of ``qrels`` none of whose positives is a positive in ``seen`` (qrels order).

    The "unseen-positive" subset: on SciFact 181 of test's 283 positive documents are also
    train positives, so a student can gain on the full test split by learning which documents
    tend to be relevant (document priors) without retrieving any better; on the queries whose
    positives it never saw as positives, only better retrieval counts. Positives are grades
    ``>= relevance_level``; a query without any positive is left out (it has nothing to find).
    """
    seen_docs = {d for judged in seen.values() for d, rel in judged.items() if rel >= relevance_level}
    out = []
    for qid, judged in qrels.items():
        positives = {d for d, rel in judged.items() if rel >= relevance_level}
        if positives and not positives & seen_docs:
            out.append(qid)
    return out


def subset(qrels: Qrels, query_ids: Iterable[str]) -> Qrels:
    """``qrels`` restricted to ``query_ids`` (evaluate a run on a subset of its queries)."""
    wanted = set(query_ids)
    return {q: judged for q, judged in qrels.items() if q in wanted}
