"""BM25 baseline: ranking, tokenisation config, persistence, and a real-data sanity check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retrieval.bm25 import META_FILE, BM25Config, BM25Index, stemmer_option
from retrieval.datasets import iter_tsv_corpus, read_trec_qrels, read_tsv_queries
from retrieval.errors import ArtifactError
from retrieval.metrics import evaluate_run
from retrieval.types import Passage

PASSAGES = [
    Passage(
        "p-plants", "Photosynthesis", "Green plants convert sunlight into chemical energy in their leaves."
    ),
    Passage("p-rome", "", "The Roman Empire was ruled from Rome by emperors for centuries."),
    Passage(
        "p-jazz", "Jazz history", "Jazz music developed in New Orleans with trumpets and improvisation."
    ),
    Passage("p-runner", "", "A marathon runner runs long distances and trains every day."),
    Passage("p-empty", "", ""),
]


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.build(PASSAGES)


def test_default_config() -> None:
    config = BM25Config()
    assert config.to_dict() == {
        "k1": 0.9, "b": 0.4, "method": "lucene", "stopwords": "en", "stemmer": "english"
    }
    assert BM25Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        BM25Config.from_dict({"k1": 1.2, "k3": 8})


def test_matching_passage_ranks_first(index: BM25Index) -> None:
    queries = ["how do plants use sunlight", "emperors of Rome", "jazz photosynthesis"]
    results = index.search(queries, top_k=3)
    assert [hits[0][0] for hits in results[:2]] == ["p-plants", "p-rome"]
    # Titles are indexed: "photosynthesis" appears only in a title; both terms match something.
    assert {docid for docid, _ in results[2]} == {"p-plants", "p-jazz"}
    for hits in results:
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


def test_no_matching_term_gives_empty_list(index: BM25Index) -> None:
    # Stop words only, and an unknown word: no passage scores above 0.
    assert index.search(["the of and", "zyzzyva"], top_k=5) == [[], []]
    assert index.search([], top_k=5) == []


def test_top_k_larger_than_corpus(index: BM25Index) -> None:
    [hits] = index.search(["plants rome jazz marathon"], top_k=1000)
    assert len(hits) == 4  # every passage but the empty one, each once
    assert len({docid for docid, _ in hits}) == 4
    with pytest.raises(ValueError):
        index.search(["plants"], top_k=0)


def test_stemmer_option() -> None:
    query = ["running"]  # the passage says "runner runs"
    assert BM25Index.build(PASSAGES, BM25Config(stemmer=None)).search(query, 5) == [[]]
    stemmed = BM25Index.build(PASSAGES)  # the default stems (english)
    assert stemmed.search(query, 5)[0][0][0] == "p-runner"
    with pytest.raises(ValueError, match="PyStemmer"):
        BM25Config(stemmer="klingon")  # refused when made, before any corpus is read


def test_stemmer_option_of_command_lines() -> None:
    assert stemmer_option("none") is None and stemmer_option("None") is None
    assert stemmer_option("porter") == "porter"


def test_search_run_and_duplicate_docids(index: BM25Index) -> None:
    run = index.search_run({"q1": "jazz trumpets", "q2": "the"}, top_k=2)
    assert list(run) == ["q1", "q2"]
    assert next(iter(run["q1"])) == "p-jazz" and run["q2"] == {}
    with pytest.raises(ValueError, match="duplicate"):
        BM25Index.build(PASSAGES + [PASSAGES[0]])
    with pytest.raises(ValueError, match="no indexable terms"):
        BM25Index.build([Passage("x", "", "a b of the"), Passage("y", "", "")])


def test_save_load_round_trip(tmp_path: Path) -> None:
    config = BM25Config(k1=1.2, b=0.75, stemmer="english")
    built = BM25Index.build(PASSAGES, config)
    built.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25", n_threads=2)
    assert loaded.config == config and loaded.docids == built.docids
    queries = ["plants sunlight", "roman emperors", "running marathons", "the"]
    assert loaded.search(queries, 10) == built.search(queries, 10)


def _remove(path: Path, name: str) -> None:
    os.remove(path / name)


def _corrupt_meta(path: Path, name: str) -> None:
    (path / name).write_text("{not json")


def _shorten_docids(path: Path, name: str) -> None:
    meta = json.loads((path / name).read_text())
    meta["docids"] = meta["docids"][:-1]
    (path / name).write_text(json.dumps(meta))


def _truncate(path: Path, name: str) -> None:
    with open(path / name, "r+b") as f:
        f.truncate(16)


@pytest.mark.parametrize(
    ("damage", "name", "message"),
    [
        (_remove, META_FILE, "not a BM25 index"),
        (_corrupt_meta, META_FILE, "corrupt BM25 index metadata"),
        (_shorten_docids, META_FILE, "does not match"),
        (_remove, "vocab.index.json", "cannot load bm25s"),
        (_truncate, "data.csc.index.npy", "cannot load bm25s"),
    ],
    ids=["no-meta", "bad-meta", "docid-count", "no-vocab", "truncated-array"],
)
def test_load_damaged_index_raises_artifact_error(
    tmp_path: Path, index: BM25Index, damage, name: str, message: str
) -> None:
    directory = tmp_path / "bm25"
    index.save(directory)
    damage(directory, name)
    with pytest.raises(ArtifactError, match=message):
        BM25Index.load(directory)


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a BM25 index"):
        BM25Index.load(tmp_path / "does-not-exist")


# --- real data: NovelEval (21 queries, 420 passages, graded qrels 0/1/2) ---------------------


def test_noveleval_bm25_quality(noveleval: Path) -> None:
    """``noveleval`` (conftest) skips the test when the shared data folder is absent."""
    passages = list(iter_tsv_corpus(noveleval / "corpus.tsv"))
    queries = read_tsv_queries(noveleval / "queries.tsv")
    qrels = read_trec_qrels(noveleval / "qrels.txt")
    assert (len(passages), len(queries)) == (420, 21)
    run = BM25Index.build(passages).search_run(queries, top_k=100)
    metrics = evaluate_run(qrels, run)
    # Measured: nDCG@10 0.594, MRR@10 0.682, R@100 0.978 (default config, no stemming).
    assert metrics["nDCG@10"] > 0.55
    assert metrics["MRR@10"] > 0.6
    assert metrics["R@100"] > 0.9
