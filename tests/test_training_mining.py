"""Hard-negative mining and the training-file format."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from retrieval.bm25 import BM25Index
from retrieval.datasets import load_dataset
from retrieval.retriever import Retriever
from training.data import (
    TrainingHeader,
    load_training_file,
    read_training_file,
    write_training_file,
)
from training.errors import TrainingFileError
from training.mining import main as mine_main
from training.mining import mine


def test_mining_never_returns_a_labelled_positive(noveleval: Path, tiny_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "mined.jsonl"
    assert mine_main(["--dataset", str(noveleval), "--split", "test", "--index", str(tiny_index), "--depth", "15",
                      "--output", str(out), "--no-progress", "--threads", "1"]) == 0
    header, records = load_training_file(out)
    dataset = load_dataset(noveleval, "test")
    assert set(header.sources) == {"bm25", "dense"} and header.depth == 15
    assert [r.query_id for r in records] == list(dataset.queries)
    for record in records:
        judged = dataset.qrels[record.query_id]
        assert {p.docid for p in record.positives} == {d for d, rel in judged.items() if rel > 0}
        negatives = [n.docid for n in record.negatives]
        assert len(negatives) == len(set(negatives))  # duplicates merged
        assert not set(negatives) & {d for d, rel in judged.items() if rel > 0}
        for candidate in record.negatives:
            assert candidate.sources and all(1 <= rank <= 15 for rank in candidate.sources.values())
            assert set(candidate.scores) == {"bm25", "dense"}
            assert candidate.relevance == judged.get(candidate.docid, 0) == 0
        assert [n.best_rank for n in record.negatives] == sorted(n.best_rank for n in record.negatives)
    # NovelEval judges 20 passages per query, many relevant: some positives are retrieved
    assert any(p.sources for r in records for p in r.positives)


def test_merged_duplicates_keep_each_sources_rank_and_exact_scores(noveleval: Path, tiny_index: Path) -> None:
    dataset = load_dataset(noveleval, "test")
    bm25 = BM25Index.build(dataset.iter_corpus())
    retriever = Retriever.open(tiny_index)
    try:
        records = list(mine(dataset, bm25, retriever, depth=10, show_progress=False))
        vectors = retriever.encoder.encode_queries([r.query for r in records])
        for record, vector in zip(records, vectors):
            bm25_top = [d for d, _ in bm25.search([record.query], 10)[0]]
            _, rows = retriever.index.search(vector[None], 10)
            dense_top = [retriever.index.docids[r] for r in rows[0]]
            for candidate in record.candidates():
                for source, top in (("bm25", bm25_top), ("dense", dense_top)):
                    if candidate.docid in top:
                        assert candidate.sources[source] == top.index(candidate.docid) + 1
                    else:
                        assert source not in candidate.sources
                row = retriever.index.docids.index(candidate.docid)
                exact = float(retriever.index.index.reconstruct(row) @ vector)
                assert candidate.scores["dense"] == pytest.approx(exact, abs=1e-5)
    finally:
        retriever.close()


def test_training_file_round_trip_and_readable_errors(noveleval: Path, tmp_path: Path) -> None:
    dataset = load_dataset(noveleval, "test")
    records = list(mine(dataset, BM25Index.build(dataset.iter_corpus()), None, depth=5, show_progress=False))
    header = TrainingHeader(dataset=str(noveleval), split="test", depth=5, sources={"bm25": {}})
    path = tmp_path / "file.jsonl"
    assert write_training_file(path, header, records) == len(records)
    again_header, again = load_training_file(path)
    assert again_header == header and again == records

    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], '{"query_id": "x", "query": "q", "positives": []}']) + "\n")
    _, records_iter = read_training_file(bad)
    with pytest.raises(TrainingFileError, match=r"bad.jsonl:3: invalid record: negatives: Field required"):
        list(records_iter)
    bad.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(TrainingFileError, match=r":3: duplicate query id"):
        load_training_file(bad)
    bad.write_text('{"format": "something-else"}\n')
    with pytest.raises(TrainingFileError, match=r"bad.jsonl:1: not an md2pr-training header"):
        read_training_file(bad)
    record = json.loads(lines[1])
    record["negatives"].append(dict(record["positives"][0]))
    bad.write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TrainingFileError, match="both positive and negative"):
        load_training_file(bad)
    with pytest.raises(TrainingFileError, match="not found"):
        read_training_file(tmp_path / "missing.jsonl")


def test_mining_cli_user_error_is_one_line(tmp_path: Path, capsys) -> None:
    code = mine_main(["--dataset", str(tmp_path), "--output", str(tmp_path / "x.jsonl"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err


def test_positives_missing_from_the_corpus_are_left_out(noveleval: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A pooled corpus (TREC DL) lacks many judged passages: they have no text to train on.
    dataset = load_dataset(noveleval, "test")
    first, second = list(dataset.queries)[:2]
    qrels = {qid: dict(judged) for qid, judged in dataset.qrels.items()}
    qrels[first]["not-in-corpus-1"] = 2  # one extra positive without text
    qrels[second] = {"not-in-corpus-2": 1, "not-in-corpus-3": 0}  # no positive with text at all
    pooled = replace(dataset, qrels=qrels)
    with caplog.at_level("WARNING", logger="training.mining"):
        records = list(mine(pooled, BM25Index.build(pooled.iter_corpus()), None, depth=5, show_progress=False))
    by_qid = {r.query_id: r for r in records}
    assert second not in by_qid and len(records) == len(dataset.queries) - 1
    assert {p.docid for p in by_qid[first].positives} == {d for d, rel in dataset.qrels[first].items() if rel > 0}
    assert all("not-in-corpus" not in c.docid for r in records for c in r.candidates())
    assert "2 judged positives are not in the corpus" in caplog.text and "1 queries had no positive" in caplog.text


def test_relevance_level_trains_only_the_higher_grades(noveleval: Path, tiny_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "graded.jsonl"
    assert mine_main(["--dataset", str(noveleval), "--split", "test", "--index", str(tiny_index), "--depth", "20",
                      "--relevance-level", "2", "--output", str(out), "--no-progress", "--threads", "1"]) == 0
    header, records = load_training_file(out)
    assert header.relevance_level == 2
    qrels = load_dataset(noveleval, "test").qrels
    related = 0
    for record in records:
        judged = qrels[record.query_id]
        assert {p.docid for p in record.positives} == {d for d, rel in judged.items() if rel >= 2}
        # a passage graded 1 (related, not answering) is neither a positive nor a negative
        assert not {n.docid for n in record.negatives} & {d for d, rel in judged.items() if rel == 1}
        assert all(judged.get(n.docid, 0) == 0 for n in record.negatives)
        related += sum(1 for rel in judged.values() if rel == 1)
    assert related > 0 and records  # NovelEval grades 0/1/2: the test means something
    with pytest.raises(SystemExit) as exit_info:
        mine_main(["--dataset", str(noveleval), "--split", "test", "--relevance-level", "0", "--output", str(tmp_path / "x.jsonl")])
    assert exit_info.value.code == 2
