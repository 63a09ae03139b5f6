"""BM25 tokenisation (stemming) chosen on training queries, then reported on the test splits.

For each PyStemmer setting (none, ``english`` = Snowball's Porter2, ``porter``) BM25 (bm25s,
Lucene, k1 0.9, b 0.4, English stop words) is built over each corpus and measured on:

- SciFact ``train:dev`` (the choice is made here), ``test`` and its unseen-positive subset (the
  test queries none of whose positives is a train positive);
- TREC DL 2021 over the DL21/DL22 pools (the web domain's training topics; grade >= 2
  relevant) and DL 2019 over its pools (the evaluation topics).

With ``--base-index`` (a Flat index of the SciFact corpus with its encoder) each SciFact row also
gives the hybrid the service serves (z(BM25) + z(dense), 1:1, top 100 of each side) with that
BM25, so the choice is seen where it is used. Writes ``benchmarks/results/bm25-tokenisation.json``::

    python benchmarks/bm25_tokenisation.py --base-index artifacts/experiments/scifact-cpu/indexes/base
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.service_common import command_line, machine_facts  # noqa: E402
from retrieval.bm25 import BM25Config, BM25Index  # noqa: E402
from retrieval.datasets import Dataset, load_dataset  # noqa: E402
from retrieval.errors import RetrievalError  # noqa: E402
from retrieval.fusion import FusionConfig  # noqa: E402
from retrieval.jsonio import write_json_atomic  # noqa: E402
from retrieval.metrics import evaluate_run, subset, unseen_positive_queries  # noqa: E402
from retrieval.types import Run  # noqa: E402

#: The settings compared (PyStemmer algorithm names; None: no stemming).
STEMMERS: tuple[str | None, ...] = (None, "english", "porter")
MEASURES = {"nDCG@10": "nDCG@10", "R@100": "R@100"}


def _splits(data: Path) -> list[dict[str, Any]]:
    """The (dataset, split) rows: which are for choosing, their relevance level and unseen subset."""
    scifact = data / "scifact"
    dl = data / "msmarco_trec_dl"
    return [
        {"name": "scifact train:dev", "root": scifact, "split": "train:dev", "level": 1, "choose": True, "hybrid": True},
        {"name": "scifact test", "root": scifact, "split": "test", "level": 1, "choose": False, "hybrid": True,
         "unseen_from": "train"},
        {"name": "dl21 (DL21/DL22 pools)", "root": dl / "dl21_dl22_v2", "split": "dl21", "level": 2, "choose": True},
        {"name": "dl19 (DL19 pools)", "root": dl / "dl19", "split": "dl19", "level": 2, "choose": False},
    ]


def _measure(qrels: dict, run: Run, level: int) -> dict[str, float]:
    return {k: round(v, 4) for k, v in evaluate_run(qrels, run, MEASURES, relevance_level=level).items()}


def _rows(spec: dict[str, Any], dataset: Dataset, retriever: Any) -> list[dict[str, Any]]:
    unseen = None
    if spec.get("unseen_from"):
        unseen = unseen_positive_queries(dataset.qrels, load_dataset(spec["root"], spec["unseen_from"]).qrels, spec["level"])
    rows = []
    for stemmer in STEMMERS:
        config = BM25Config(stemmer=stemmer)
        bm25 = BM25Index.build(dataset.iter_corpus(), config)
        run = bm25.search_run(dataset.queries, 1000)
        row: dict[str, Any] = {"stemmer": stemmer, "bm25": _measure(dataset.qrels, run, spec["level"])}
        if unseen:
            row["bm25_unseen"] = _measure(subset(dataset.qrels, unseen), run, spec["level"])
        if retriever is not None and spec.get("hybrid"):
            retriever.bm25, retriever.fusion = bm25, FusionConfig()
            hybrid = retriever.search_run(dataset.queries, 100, mode="hybrid")
            row["hybrid"] = _measure(dataset.qrels, hybrid, spec["level"])
            if unseen:
                row["hybrid_unseen"] = _measure(subset(dataset.qrels, unseen), hybrid, spec["level"])
        print(spec["name"], stemmer, {k: v for k, v in row.items() if k != "stemmer"}, flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MD2PR_DATA_DIR", PROJECT.parent / "shared" / "data")))
    parser.add_argument("--base-index", type=Path, default=None, help="Flat SciFact index for the hybrid columns")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "bm25-tokenisation.json")
    args = parser.parse_args(argv)
    retriever = None
    try:
        if args.base_index is not None:
            from retrieval.retriever import Retriever

            retriever = Retriever.open(args.base_index)
        splits = []
        for spec in _splits(args.data):
            dataset = load_dataset(spec["root"], spec["split"])
            splits.append({"name": spec["name"], "dataset": str(spec["root"]), "split": spec["split"],
                           "relevance_level": spec["level"], "choose": spec["choose"], "queries": len(dataset.queries),
                           "rows": _rows(spec, dataset, retriever)})
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = {s["name"]: max(s["rows"], key=lambda r: r["bm25"]["nDCG@10"])["stemmer"] for s in splits if s["choose"]}
    report = {
        "kind": "bm25-tokenisation",
        "command": command_line(argv),
        "machine": machine_facts(None),
        "base_index": str(args.base_index) if args.base_index else None,
        "bm25": {k: v for k, v in BM25Config().to_dict().items() if k != "stemmer"},
        "fusion": FusionConfig().to_dict(),
        "chosen_on": chosen,
        "splits": splits,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output, report)
    print(f"chosen on the training splits (nDCG@10 of BM25): {chosen}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
