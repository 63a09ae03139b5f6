"""``md2pr-export``: export an encoder to ONNX (fp32 and int8) and record each backend's parity with torch.

Examples::

    md2pr-export --encoder builtin:all-MiniLM-L6-v2 --parity-dataset ../shared/data/scifact
    md2pr-export --encoder artifacts/models/student --parity-dataset ../shared/data/scifact --split test

The export is written beside the model (``<model>/onnx/``), or for the packaged builtin model
under ``<artifacts>/exports/<fingerprint>/`` (see ``retrieval.backends``); an up-to-date export
is reused, and so is a parity record of it on the same data. With ``--parity-dataset`` every
exported backend is checked against torch (vectors of the split's queries and of the corpus,
nDCG@10 on both sides and on the query side) and the verdict written to ``parity.json``: a backend is served or used by an index build only when it
passed. Exit code 0 even when a backend failed its check (the record says so); 2 on a user error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from retrieval.backends import (
    EXPORT_FILE,
    ONNX_FILES,
    PARITY_FILE,
    BackendParity,
    ExportManifest,
    ParityRecord,
    read_record,
)
from retrieval.datasets import load_dataset
from retrieval.encoder import DualEncoder
from retrieval.onnx_export import check_parity, export_onnx, write_parity
from retrieval.paths import BUILTIN_MODEL
from retrieval.runtime import run_job

logger = logging.getLogger("index_build")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="md2pr-export", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default=BUILTIN_MODEL, help="model directory (default: %(default)s)")
    parser.add_argument(
        "--force", action="store_true",
        help="export and check again even if an up-to-date export and its parity record on the same data exist",
    )
    parser.add_argument(
        "--parity-dataset", type=Path, default=None,
        help="dataset directory (BEIR, TSV or TREC DL layout) to check parity on; without it no check runs",
    )
    parser.add_argument("--split", default="test", help="judged split of --parity-dataset (default: %(default)s)")
    parser.add_argument(
        "--backend", dest="backends", action="append", choices=list(ONNX_FILES), default=None,
        help="backend to check (repeatable; default: all exported)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch/FAISS/ONNX Runtime threads (default: all cores)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be positive")
    return args


def recorded_parity(directory: Path, fingerprint: str, manifest: ExportManifest, dataset_dir: Path,
                    split: str, backend: str) -> BackendParity | None:
    """The parity record of ``backend`` for this very export and data, if one was written already."""
    if not (directory / PARITY_FILE).is_file():
        return None
    record: ParityRecord = read_record(directory / PARITY_FILE, ParityRecord)
    parity = record.backends.get(backend)
    same = (parity is not None and record.source_fingerprint == fingerprint
            and parity.model_sha256 == manifest.files[backend].sha256
            and parity.dataset == str(dataset_dir.resolve()) and parity.split == split)
    return parity if same else None


def run_parity(encoder: DualEncoder, directory: Path, dataset_dir: Path, split: str,
               backends: list[str], threads: int, batch_size: int) -> list[BackendParity]:
    """Check each backend in ``backends`` against ``encoder`` (torch) and write ``parity.json``."""
    dataset = load_dataset(dataset_dir, split)
    corpus = {p.docid: p.full_text for p in dataset.iter_corpus()}
    manifest: ExportManifest = read_record(directory / EXPORT_FILE, ExportManifest)
    results: list[BackendParity] = []
    reference_vectors = None
    for name in backends:
        candidate = encoder.with_backend(name, threads, require_parity=False)
        parity, reference_vectors = check_parity(
            encoder, candidate, dataset.queries, corpus, dataset.qrels, str(dataset_dir.resolve()), split,
            manifest.files[name].sha256, reference_vectors, batch_size,
        )
        logger.info("parity %s: %s", name, parity.reason)
        results.append(parity)
    write_parity(directory, encoder.fingerprint, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(threads: int) -> int:
        encoder = DualEncoder.from_pretrained(args.encoder)
        directory, manifest = export_onnx(encoder, force=args.force)
        line = f"exported {encoder.fingerprint[:12]} -> {directory}"
        if args.parity_dataset is not None:
            wanted = args.backends or list(manifest.files)
            results = [] if args.force else [
                p for name in wanted
                if (p := recorded_parity(directory, encoder.fingerprint, manifest, args.parity_dataset, args.split, name))
            ]
            todo = [name for name in wanted if name not in {p.backend for p in results}]
            if todo:
                results += run_parity(encoder, directory, args.parity_dataset, args.split, todo, threads, args.batch_size)
            line += " (" + ", ".join(f"{p.backend} {'passed' if p.passed else 'FAILED'}" for p in results) + ")"
        print(line)
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
