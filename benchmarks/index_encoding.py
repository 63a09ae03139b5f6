"""Encoding throughput of the index build against ``SentenceTransformer.encode``.

Same model (the packaged all-MiniLM-L6-v2), same SciFact passages, same batch size and maximum
length, same process and threads; runs alternate between the two (the order flips every
round) and the median passages/s of each is compared. The vectors must agree (max abs
difference <= 1e-4). The build side is :class:`index_build.encoding.PassageEncoder` over
shard-sized windows, exactly as ``md2pr-build-index`` encodes.

Run: ``python benchmarks/index_encoding.py`` -> ``benchmarks/results/index-encoding.json``
(needs sentence-transformers: ``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_families import machine  # noqa: E402

from index_build.build import DEFAULT_SHARD_SIZE  # noqa: E402
from index_build.encoding import PassageEncoder  # noqa: E402
from retrieval.datasets import iter_corpus  # noqa: E402
from retrieval.encoder import DualEncoder  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, builtin_model_dir, data_dir  # noqa: E402
from retrieval.runtime import configure_threads  # noqa: E402

GOAL = 1.3
TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=512, help="SciFact passages per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, alternated (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "index-encoding.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    threads = configure_threads(args.threads)
    passages = list(itertools.islice(iter_corpus(data_dir() / "scifact"), args.passages))
    texts = [p.full_text for p in passages]
    encoder = DualEncoder.from_pretrained(BUILTIN_MODEL)
    st = SentenceTransformer(str(builtin_model_dir()), device="cpu")
    if st.max_seq_length != encoder.config.max_passage_length:
        raise SystemExit(f"max length differs: {st.max_seq_length} vs {encoder.config.max_passage_length}")
    ours = PassageEncoder(encoder, args.batch_size)

    def run_ours() -> np.ndarray:
        windows = [texts[i : i + DEFAULT_SHARD_SIZE] for i in range(0, len(texts), DEFAULT_SHARD_SIZE)]
        return np.concatenate([ours.encode(w) for w in windows])

    def run_st() -> np.ndarray:
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)

    ours.encode(texts[:8])  # warm up both
    st.encode(texts[:8], batch_size=args.batch_size)
    runs: dict[str, list[float]] = {"ours": [], "sentence_transformers": []}
    vectors: dict[str, np.ndarray] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    for round_no in range(args.rounds):
        order = [("ours", run_ours), ("sentence_transformers", run_st)]
        for name, fn in order if round_no % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            vectors[name] = fn()
            rate = len(texts) / (time.perf_counter() - t0)
            runs[name].append(round(rate, 2))
            print(f"round {round_no}: {name} {rate:.1f} passages/s", flush=True)
    median = {name: statistics.median(values) for name, values in runs.items()}
    diff = float(np.abs(vectors["ours"] - vectors["sentence_transformers"]).max())
    speedup = median["ours"] / median["sentence_transformers"]
    report = {
        "kind": "index_encoding",
        "command": f"python benchmarks/index_encoding.py --passages {args.passages} --rounds {args.rounds} --batch-size {args.batch_size}"
        + (f" --threads {args.threads}" if args.threads else ""),
        "machine": {**machine(), "threads": threads, "load_average_at_start": load_before,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"model": BUILTIN_MODEL, "passages": len(texts), "corpus": "SciFact corpus.jsonl (first passages)",
                   "batch_size": args.batch_size, "max_length": encoder.config.max_passage_length},
        "runs_passages_per_s": runs,
        "median_passages_per_s": {k: round(v, 2) for k, v in median.items()},
        "speedup": round(speedup, 3),
        "goal": GOAL,
        "max_abs_diff": diff,
        "vectors_identical": diff <= TOLERANCE,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_passages_per_s", "speedup", "max_abs_diff")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
