"""``md2pr-annotate``: score every (query, candidate) of a training file with the teacher.

Example::

    md2pr-annotate --training-file artifacts/teacher/scifact-train.jsonl \\
        --teacher artifacts/teacher/minilm-cpu/model --output artifacts/teacher/scifact-train.teacher.jsonl \\
        --attention-dir artifacts/teacher/scifact-train.attention

Writes a copy of the training file in which every candidate has ``cross_encoder_score`` and
``teacher_score`` (:func:`retrieval.cross_encoder.teacher_scores`: fused with the first-stage
scores when the teacher's config has fitted fusion weights, unless ``--no-fusion``), and the
header's ``teacher`` records the teacher's source, fingerprint and fusion. Sentence-level
distillation then needs no teacher at training time.

With ``--attention-dir`` it also caches query->passage attention maps for word-level
distillation: one ``<record index, 6 digits>.npz`` per query (the record's 0-based position in
the file) holding ``docids`` (the candidates cached, positives first, then the first
``--attention-negatives`` negatives) and, for the i-th of them, ``attention_<i>``
(``[query tokens, passage tokens]`` float16, see :class:`retrieval.cross_encoder.PairAttention`),
``query_offsets_<i>`` and ``passage_offsets_<i>`` (int32 character spans). Layers are chosen
with ``--attention-layers``.

Resumable: records are appended to ``<output>.partial`` as they are done; a rerun skips the
records already there and renames the file to ``<output>`` at the end.

Score cache (``--score-cache FILE ...``; distillation passes its earlier annotated files): the
cross-encoder score of a (query text, docid) pair depends on nothing else but the teacher and the
passage text, so a pair already scored by the *same teacher* (fingerprint) over the *same
dataset* in another annotated file is taken from there instead of being run again. Only the
cross-encoder score is reused; the fused ``teacher_score`` is always recomputed over the record's
own candidate list (its z-scores are per list). Re-mining in a later iteration, hiding positives
for the filter check, or adding pseudo-queries then costs the teacher only the new pairs.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.cross_encoder import (
    CrossEncoder,
    TeacherFusion,
    exact_bm25_scores,
    exact_dense_scores,
    teacher_scores,
)
from retrieval.datasets import iter_corpus
from retrieval.jsonio import atomic_open
from retrieval.retriever import Retriever
from retrieval.runtime import run_job

from .data import (
    TrainingHeader,
    TrainingRecord,
    header_line,
    read_training_file,
    record_line,
)
from .errors import TrainingError, TrainingFileError

logger = logging.getLogger(__name__)

#: ``{(query text, docid): cross_encoder_score}`` of one teacher over one dataset's passages.
ScoreCache = dict[tuple[str, str], float]


def teacher_info(teacher: CrossEncoder, fusion: TeacherFusion | None, attention: dict | None) -> dict:
    """The header's ``teacher`` entry."""
    return {
        "source": teacher.source,
        "fingerprint": teacher.fingerprint,
        "head": teacher.config.head,
        "max_length": teacher.config.max_length,
        "score": "fused" if fusion is not None else "cross_encoder",
        "fusion": fusion.model_dump() if fusion is not None else None,
        "attention": attention,
    }


class FirstStageRescorer:
    """Recomputes the first-stage scores the fused teacher needs when the file's do not match it.

    The fused teacher's dense score must come from the encoder recorded in its fusion (the
    base student), and its BM25 score from the recorded BM25 settings; a file mined with a
    later student carries another dense score, which is replaced here.
    """

    def __init__(self, header: TrainingHeader, fusion: TeacherFusion, index: Path | None) -> None:
        self.bm25: BM25Index | None = None
        self.retriever: Retriever | None = None
        if header.sources.get("bm25") != fusion.bm25:
            self.bm25 = BM25Index.build(iter_corpus(Path(header.dataset)), BM25Config.from_dict(fusion.bm25))
        file_dense = header.sources.get("dense", {}).get("fingerprint")
        if file_dense != fusion.dense_encoder_fingerprint:
            if index is None:
                raise TrainingError(
                    "the training file's dense scores come from another encoder than the teacher's fusion "
                    f"({fusion.dense_encoder}); pass --index with an index built by that encoder"
                )
            self.retriever = Retriever.open(index)
            if self.retriever.encoder.fingerprint != fusion.dense_encoder_fingerprint:
                self.retriever.close()
                raise TrainingError(f"{index}: built by encoder {self.retriever.encoder.fingerprint[:12]}, the teacher's fusion "
                                    f"needs {fusion.dense_encoder_fingerprint[:12]} ({fusion.dense_encoder})")

    def scores(self, record: TrainingRecord, docids: list[str]) -> tuple[list[float | None], list[float | None]]:
        """``(bm25, dense)`` scores of ``docids`` as the fused teacher defines them."""
        by_docid = {c.docid: c for c in record.candidates()}
        if self.bm25 is not None:
            bm25 = list(exact_bm25_scores(self.bm25, record.query, docids))
        else:
            bm25 = [by_docid[d].scores.get("bm25") for d in docids]
        if self.retriever is not None:
            vector = self.retriever.encoder.encode_queries([record.query])[0]
            dense = exact_dense_scores(self.retriever, vector, docids)
        else:
            dense = [by_docid[d].scores.get("dense") for d in docids]
        return bm25, dense

    def close(self) -> None:
        if self.retriever is not None:
            self.retriever.close()


def load_score_cache(paths: list[Path], teacher_fingerprint: str, dataset: str) -> ScoreCache:
    """The cross-encoder scores in the annotated training files ``paths`` that the teacher with
    ``teacher_fingerprint`` gave over the passages of ``dataset`` (a file from another teacher or
    dataset, or not annotated, is skipped with a log line; a missing path is skipped silently)."""
    cache: ScoreCache = {}
    target = Path(dataset).resolve()
    for path in paths:
        if not Path(path).is_file():
            continue
        header, records = read_training_file(path)
        teacher = header.teacher or {}
        if teacher.get("fingerprint") != teacher_fingerprint or Path(header.dataset).resolve() != target:
            logger.info("score cache: %s skipped (another teacher or dataset)", path)
            continue
        for record in records:
            for c in record.candidates():
                if c.cross_encoder_score is not None:
                    cache[(record.query, c.docid)] = float(c.cross_encoder_score)
    return cache


def annotate_record(
    record: TrainingRecord,
    teacher: CrossEncoder,
    passages: dict[str, str],
    fusion: TeacherFusion | None,
    rescorer: FirstStageRescorer | None,
    batch_size: int = 32,
    cache: ScoreCache | None = None,
) -> TrainingRecord:
    """A copy of ``record`` with ``cross_encoder_score`` and ``teacher_score`` on every candidate.

    Pairs found in ``cache`` are not scored again; the newly scored ones are added to it.
    """
    candidates = record.candidates()
    docids = [c.docid for c in candidates]
    cache = {} if cache is None else cache
    ce = np.array([cache.get((record.query, d), np.nan) for d in docids], dtype=np.float64)  # [candidates]
    todo = [i for i, d in enumerate(docids) if (record.query, d) not in cache]
    if todo:
        fresh = teacher.score([record.query] * len(todo), [passages[docids[i]] for i in todo], batch_size=batch_size)
        ce[todo] = fresh
        cache.update({(record.query, docids[i]): float(v) for i, v in zip(todo, fresh.tolist())})
    if fusion is not None and rescorer is not None:
        bm25, dense = rescorer.scores(record, docids)
        final = teacher_scores(docids, ce, bm25=bm25, dense=dense, fusion=fusion)
    else:
        final = teacher_scores(docids, ce)
    scored = [
        c.model_copy(update={"cross_encoder_score": float(s), "teacher_score": float(t)})
        for c, s, t in zip(candidates, ce.tolist(), final.tolist())
    ]
    n = len(record.positives)
    return record.model_copy(update={"positives": scored[:n], "negatives": scored[n:]})


def cache_attention(
    path: Path,
    record: TrainingRecord,
    teacher: CrossEncoder,
    passages: dict[str, str],
    negatives: int,
    layers: list[int],
) -> None:
    """Write the record's attention maps to ``path`` (``.npz``; layout in the module docstring)."""
    docids = [c.docid for c in record.positives] + [c.docid for c in record.negatives[:negatives]]
    maps = teacher.attentions([record.query] * len(docids), [passages[d] for d in docids], layers=layers)
    arrays: dict[str, np.ndarray] = {"docids": np.array(docids)}
    for i, pair in enumerate(maps):
        arrays[f"attention_{i}"] = pair.attention.astype(np.float16)
        arrays[f"query_offsets_{i}"] = pair.query_offsets
        arrays[f"passage_offsets_{i}"] = pair.passage_offsets
    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_attention(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read one cached ``.npz``: ``{docid: (attention float32, query_offsets, passage_offsets)}``."""
    with np.load(path) as data:
        return {
            str(docid): (
                data[f"attention_{i}"].astype(np.float32),
                data[f"query_offsets_{i}"],
                data[f"passage_offsets_{i}"],
            )
            for i, docid in enumerate(data["docids"].tolist())
        }


def annotate_file(
    training_file: Path,
    output: Path,
    teacher_dir: str,
    use_fusion: bool = True,
    index: Path | None = None,
    attention_dir: Path | None = None,
    attention_negatives: int = 4,
    attention_layers: tuple[int, ...] = (-1,),
    batch_size: int = 32,
    show_progress: bool = True,
    score_cache: list[Path] | None = None,
    stats: dict[str, int] | None = None,
) -> int:
    """Annotate ``training_file`` into ``output`` (resumable); returns the number of records.

    ``score_cache``: annotated files whose cross-encoder scores are reused (module docstring).
    ``stats``, if given, receives ``pairs`` (candidates annotated by this call) and
    ``pairs_scored`` (of those, the ones the teacher ran on: the rest came from the cache).
    """
    header, records = read_training_file(training_file)
    if output.resolve() == training_file.resolve():
        raise TrainingError("--output must differ from --training-file")
    teacher = CrossEncoder.from_pretrained(teacher_dir, attentions=attention_dir is not None)
    fusion = teacher.config.fusion if use_fusion else None
    rescorer = FirstStageRescorer(header, fusion, index) if fusion is not None else None
    attention = None
    if attention_dir is not None:
        attention_dir.mkdir(parents=True, exist_ok=True)
        attention = {"dir": str(attention_dir), "layers": list(attention_layers), "negatives": attention_negatives}
    out_header = header.model_copy(update={"teacher": teacher_info(teacher, fusion, attention)})
    partial = output.with_name(output.name + ".partial")
    done = 0
    if partial.is_file():
        content = partial.read_text(encoding="utf-8")
        lines = content.split("\n")[:-1]  # only newline-terminated lines: one cut by a kill is redone
        if not lines or lines[0] + "\n" != header_line(out_header):
            raise TrainingFileError(f"{partial}: left by a run with another teacher or input; delete it to start over")
        complete = lines[1:]
        done = len(complete)
        partial.write_text(lines[0] + "\n" + "".join(line + "\n" for line in complete), encoding="utf-8")
        logger.info("resuming after %d annotated records", done)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(header_line(out_header), encoding="utf-8")
    records = list(records)
    cache = load_score_cache(list(score_cache or []), teacher.fingerprint, header.dataset)
    if cache:
        logger.info("score cache: %d scored pairs of this teacher from %d file(s)", len(cache), len(score_cache or []))
    needed = {c.docid for r in records[done:] for c in r.candidates()}
    passages = {p.docid: p.full_text for p in iter_corpus(Path(header.dataset)) if p.docid in needed}
    missing = needed - passages.keys()
    if missing:
        raise TrainingFileError(f"{training_file}: {len(missing)} docids are not in the corpus {header.dataset}")
    pairs = scored = 0
    try:
        with partial.open("a", encoding="utf-8") as out:
            for i in tqdm(range(done, len(records)), desc="annotating", unit="query", initial=done,
                          total=len(records), disable=not show_progress):
                size = len(cache)
                record = annotate_record(records[i], teacher, passages, fusion, rescorer, batch_size, cache)
                pairs += len(record.positives) + len(record.negatives)
                scored += len(cache) - size
                if attention_dir is not None:
                    cache_attention(attention_dir / f"{i:06d}.npz", record, teacher, passages,
                                    attention_negatives, list(attention_layers))
                out.write(record_line(record))
                out.flush()
    finally:
        if rescorer is not None:
            rescorer.close()
    os.replace(partial, output)
    logger.info("annotated %d pairs, %d of them scored by the teacher (the rest from the score cache)", pairs, scored)
    if stats is not None:
        stats.update(pairs=pairs, pairs_scored=scored)
    return len(records)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-annotate", description=__doc__.splitlines()[0])
    parser.add_argument("--training-file", type=Path, required=True, help="from md2pr-mine")
    parser.add_argument("--teacher", required=True, help="cross-encoder directory (from md2pr-train-teacher)")
    parser.add_argument("--output", type=Path, required=True, help="annotated training file to write")
    parser.add_argument("--no-fusion", action="store_true", help="teacher_score = the cross-encoder alone")
    parser.add_argument("--index", type=Path, help="index of the fusion's dense encoder, if the file was mined with another")
    parser.add_argument("--attention-dir", type=Path, help="also cache query->passage attention maps here")
    parser.add_argument("--attention-negatives", type=int, default=4, help="negatives per query with cached attention")
    parser.add_argument("--attention-layers", type=int, nargs="+", default=[-1], help="layers averaged (default: last)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--score-cache", type=Path, nargs="+", default=[], metavar="FILE",
                        help="annotated files whose cross-encoder scores (same teacher, same dataset) are reused")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.attention_negatives < 0 or args.batch_size < 1:
        parser.error("--attention-negatives must be >= 0 and --batch-size >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error)."""
    args = parse_args(argv)

    def body(_threads: int) -> int:
        count = annotate_file(
            args.training_file, args.output, args.teacher, use_fusion=not args.no_fusion, index=args.index,
            attention_dir=args.attention_dir, attention_negatives=args.attention_negatives,
            attention_layers=tuple(args.attention_layers), batch_size=args.batch_size,
            show_progress=not args.no_progress, score_cache=args.score_cache,
        )
        logger.info("annotated %d queries into %s", count, args.output)
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
