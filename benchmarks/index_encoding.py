"""Encoding throughput of the index build, per encoder backend, against ``SentenceTransformer.encode``.

Same model (the packaged all-MiniLM-L6-v2), same SciFact passages, same batch size and maximum
length, same process and threads; runs alternate between the contestants (the order rotates
every round) and the median passages/s of each is compared. The build side is
:class:`index_build.encoding.PassageEncoder` over shard-sized windows, exactly as
``md2pr-build-index --backend B`` encodes, for each backend B given (default: torch, onnx,
onnx-int8; the ONNX ones need ``md2pr-export --parity-dataset`` to have passed). Each
backend's vectors are compared with sentence-transformers' (max abs difference, min cosine).

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
from retrieval.backends import BACKENDS, BackendError  # noqa: E402
from retrieval.encoder import DualEncoder  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, builtin_model_dir, data_dir  # noqa: E402
from retrieval.runtime import configure_threads  # noqa: E402

GOAL = 1.5
TOLERANCE = 1e-4
ST = "sentence_transformers"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=512, help="SciFact passages per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, alternated (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", dest="backends", action="append", choices=list(BACKENDS), default=None,
                        help="build-side backend (repeatable; default: all)")
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
    builders: dict[str, PassageEncoder] = {}
    refused: dict[str, str] = {}
    for b in args.backends or list(BACKENDS):
        try:  # exactly what md2pr-build-index --backend b accepts: an export with a passing parity record
            builders[b] = PassageEncoder(encoder if b == "torch" else encoder.with_backend(b, threads), args.batch_size)
        except BackendError as exc:
            refused[b] = str(exc)
            print(f"skipping {b}: {exc}", flush=True)
    backends = list(builders)

    def run_ours(builder: PassageEncoder) -> np.ndarray:
        windows = [texts[i : i + DEFAULT_SHARD_SIZE] for i in range(0, len(texts), DEFAULT_SHARD_SIZE)]
        return np.concatenate([builder.encode(w) for w in windows])

    def run_st() -> np.ndarray:
        return st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)

    contestants = {**{b: (lambda b=b: run_ours(builders[b])) for b in backends}, ST: run_st}
    for builder in builders.values():  # warm up every contestant
        builder.encode(texts[:8])
    st.encode(texts[:8], batch_size=args.batch_size)
    runs: dict[str, list[float]] = {name: [] for name in contestants}
    vectors: dict[str, np.ndarray] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    names = list(contestants)
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            vectors[name] = contestants[name]()
            rate = len(texts) / (time.perf_counter() - t0)
            runs[name].append(round(rate, 2))
            print(f"round {round_no}: {name} {rate:.1f} passages/s", flush=True)
    median = {name: statistics.median(values) for name, values in runs.items()}
    per_backend = {}
    for b in backends:
        diff = float(np.abs(vectors[b] - vectors[ST]).max())
        cosine = float((vectors[b] * vectors[ST]).sum(axis=1).min())  # both unit length
        per_backend[b] = {
            "median_passages_per_s": round(median[b], 2),
            "speedup": round(median[b] / median[ST], 3),
            "max_abs_diff": diff,
            "min_cosine": round(cosine, 6),
            "vectors_identical": diff <= TOLERANCE,
        }
    report = {
        "kind": "index_encoding",
        "command": f"python benchmarks/index_encoding.py --passages {args.passages} --rounds {args.rounds} --batch-size {args.batch_size}"
        + (f" --threads {args.threads}" if args.threads else "")
        + "".join(f" --backend {b}" for b in args.backends or []),
        "machine": {**machine(), "threads": threads, "load_average_at_start": load_before,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"model": BUILTIN_MODEL, "passages": len(texts), "corpus": "SciFact corpus.jsonl (first passages)",
                   "batch_size": args.batch_size, "max_length": encoder.config.max_passage_length},
        "runs_passages_per_s": runs,
        "median_passages_per_s": {k: round(v, 2) for k, v in median.items()},
        "backends": per_backend,
        "refused_backends": refused,
        "goal": GOAL,
        "tolerance": TOLERANCE,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["backends"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
