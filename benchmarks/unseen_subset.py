"""Write a BEIR dataset directory whose ``--split`` qrels keep only the unseen-positive queries.

The unseen-positive subset (``retrieval.metrics.unseen_positive_queries``): the queries of
``--split`` none of whose positives is a positive of ``--seen``. ``md2pr-evaluate --unseen-from``
measures it beside the full split; this directory lets a costly evaluation (the teacher
reranking 100 passages a query) run on those queries alone. The corpus, the queries and the
``--seen`` qrels are symbolic links to the source directory (nothing is copied):

    python benchmarks/unseen_subset.py --dataset /work/shared/data/scifact --split test --seen train \\
        --output /tmp/scifact-unseen
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.datasets import load_beir  # noqa: E402
from retrieval.errors import RetrievalError  # noqa: E402
from retrieval.metrics import unseen_positive_queries  # noqa: E402


def write_unseen_subset(dataset: Path, split: str, seen: str, output: Path, relevance_level: int = 1) -> int:
    """Write ``output`` (links to ``dataset`` plus the filtered ``qrels/<split>.tsv``); returns the query count."""
    queries = set(unseen_positive_queries(load_beir(dataset, split).qrels, load_beir(dataset, seen).qrels, relevance_level))
    (output / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{seen}.tsv"):
        link = output / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((dataset / name).resolve())
    lines = (dataset / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0], *(line for line in lines[1:] if line.split("\t")[0] in queries)]
    (output / "qrels" / f"{split}.tsv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return len(queries)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR dataset directory")
    parser.add_argument("--split", default="test", help="qrels split to restrict (default: test)")
    parser.add_argument("--seen", default="train", help="qrels split whose positives count as seen (default: train)")
    parser.add_argument("--relevance-level", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True, help="directory to write (outside the repository)")
    args = parser.parse_args(argv)
    try:
        n = write_unseen_subset(args.dataset, args.split, args.seen, args.output, args.relevance_level)
    except (RetrievalError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: {n} {args.split} queries none of whose positives is a {args.seen} positive")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
