"""Dataset readers: real slices of the shared data, and malformed inputs written to tmp_path."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from retrieval.datasets import (
    Dataset,
    DLPool,
    iter_beir_corpus,
    iter_corpus,
    iter_tsv_corpus,
    load_beir,
    load_dataset,
    load_unjudged_queries,
    read_beir_qrels,
    read_beir_queries,
    read_dl_pool_json,
    read_trec_qrels,
    read_trec_topics,
    read_tsv_queries,
)
from retrieval.errors import DatasetFormatError
from retrieval.paths import data_dir


@pytest.fixture(scope="module")
def data() -> Path:
    root = data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data directory {root} is absent (set MD2PR_DATA_DIR)")
    return root


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(read: Callable[[Path], object], path: Path) -> str:
    """Run a reader to completion, expecting a DatasetFormatError; return its message."""
    with pytest.raises(DatasetFormatError) as info:
        result = read(path)
        if not isinstance(result, (dict, Dataset, DLPool)):
            list(result)  # type: ignore[call-overload]  # drain an iterator
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# NovelEval (TSV layout)


def test_noveleval_corpus(data: Path) -> None:
    passages = list(iter_tsv_corpus(data / "noveleval" / "corpus.tsv"))
    assert len(passages) == 420
    assert passages[0].docid == "0-0"
    assert passages[0].text.startswith("Spider-Man: Across the Spider-Verse is a 2023")
    assert len({p.docid for p in passages}) == 420
    assert all(p.title == "" and p.text for p in passages)
    by_id = {p.docid: p for p in passages}
    # CSV quoting is undone: doubled inner quotes, and a quoted field holding 23 tabs.
    assert by_id["11-0"].text.startswith('"Middle Ground" is a song by American pop rock band Maroon 5.')
    table = by_id["14-17"].text
    assert table.startswith("Top earning footballers") and table.endswith("£4m")
    assert table.count("\t") == 23


def test_noveleval_queries_and_qrels(data: Path) -> None:
    queries = read_tsv_queries(data / "noveleval" / "queries.tsv")
    assert len(queries) == 21
    assert queries["2"] == "Which film was the 2023 Palme d'Or winner?"
    qrels = read_trec_qrels(data / "noveleval" / "qrels.txt")
    assert set(qrels) == set(queries)
    grades = Counter(rel for judged in qrels.values() for rel in judged.values())
    assert grades == {0: 290, 1: 40, 2: 90}
    assert all(len(judged) == 20 for judged in qrels.values())


def test_noveleval_load_dataset(data: Path) -> None:
    dataset = load_dataset(data / "noveleval", "test")
    assert dataset.corpus_path == data / "noveleval" / "corpus.tsv"
    assert len(dataset.queries) == 21
    assert sum(len(judged) for judged in dataset.qrels.values()) == 420
    assert sum(1 for _ in dataset.iter_corpus()) == 420
    assert load_dataset(data / "noveleval", "all").qrels == dataset.qrels
    with pytest.raises(DatasetFormatError, match="no split 'dev'"):
        load_dataset(data / "noveleval", "dev")


# --------------------------------------------------------------------------------------------
# SciFact (BEIR layout)


def test_scifact_test_split(data: Path) -> None:
    dataset = load_beir(data / "scifact", "test")
    assert len(dataset.queries) == 300
    assert sum(len(judged) for judged in dataset.qrels.values()) == 339
    assert set(dataset.queries) == set(dataset.qrels)
    assert dataset.queries["1"] == "0-dimensional biomaterials show inductive properties."
    # The same split as published in Anserini's topics file (gzipped TSV).
    topics = read_trec_topics(data / "topics_qrels" / "topics" / "topics.beir-v1.0.0-scifact.test.tsv.gz")
    assert topics == dataset.queries
    assert read_trec_qrels(data / "topics_qrels" / "qrels" / "qrels.beir-v1.0.0-scifact.test.txt") == dataset.qrels


def test_scifact_corpus_stream(data: Path) -> None:
    dataset = load_dataset(data / "scifact", "test")
    passages = dataset.iter_corpus()
    first = next(passages)
    assert first.docid == "4983"
    assert first.title.startswith("Microstructural development of human newborn cerebral white matter")
    count, docids = 1, {first.docid}
    for passage in passages:
        assert passage.text, passage.docid
        docids.add(passage.docid)
        count += 1
    assert count == len(docids) == 5183


def test_scifact_missing_split_lists_available(data: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"qrels/dev\.tsv: no split 'dev' \(available: test, train\)"):
        load_beir(data / "scifact", "dev")
    train = load_beir(data / "scifact", "train")
    assert len(train.queries) == 809
    assert sum(len(judged) for judged in train.qrels.values()) == 919


# --------------------------------------------------------------------------------------------
# TREC DL 2019 and topics


def test_dl19_pool_and_qrels(data: Path) -> None:
    dl19 = data / "msmarco_trec_dl" / "dl19"
    pool = read_dl_pool_json(dl19 / "BM25" / "retrieve_results_dl19.json")
    assert len(pool.queries) == 43
    assert pool.queries["264014"] == "how long is life cycle of flea"
    assert pool.queries == read_trec_topics(dl19 / "topics.dl19-passage.txt")
    assert all(len(hits) == 100 for hits in pool.run.values())
    assert pool.run["264014"]["5611210"] == pytest.approx(15.7806, abs=1e-4)
    assert len(pool.passages) == 4297  # 4300 hits; 3 passages retrieved for two queries
    assert set(pool.passages) == {docid for hits in pool.run.values() for docid in hits}
    flea = pool.passages["5611210"]
    assert flea.title == "" and flea.text.startswith("5. Cancel. A flea can live up to a year")

    qrels = read_trec_qrels(dl19 / "qrels.dl19-passage.txt")
    assert set(qrels) == set(pool.queries)
    assert sum(len(judged) for judged in qrels.values()) == 9260
    assert {rel for judged in qrels.values() for rel in judged.values()} == {0, 1, 2, 3}


def test_topic_formats(data: Path) -> None:
    topics = data / "topics_qrels" / "topics"
    cacm = read_trec_topics(topics / "topics.cacm.txt")  # <DOC><DOCNO> SGML blocks
    assert len(cacm) == 64 and list(cacm)[:3] == ["1", "2", "3"]
    assert cacm["1"] == (
        "What articles exist which deal with TSS (Time Sharing System), an operating system for IBM computers?"
    )
    robust04 = read_trec_topics(topics / "topics.beir-v1.0.0-robust04.test.tsv.gz")
    assert len(robust04) == 249
    assert robust04["350"].startswith("Is it hazardous to the health of individuals to work with")
    dl21 = read_trec_topics(data / "msmarco_trec_dl" / "dl21_dl22_v2" / "topics.dl21.txt")  # CRLF endings
    assert len(dl21) == 477 and dl21["787021"] == "what is produced by muscle"
    dev = read_tsv_queries(topics / "topics.msmarco-passage.dev-subset.txt")
    assert len(dev) == 6980 and dev["2"] == "Androgen receptor define"


# --------------------------------------------------------------------------------------------
# Synthetic files: formats and errors


def test_tsv_corpus_with_title_header_and_gzip(tmp_path: Path) -> None:
    text = "docid\ttitle\ttext\nd1\tFirst\tone body\n\nd2\t\ttwo body\n"
    plain = _write(tmp_path, "collection.tsv", text)
    packed = tmp_path / "collection.tsv.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed):
        passages = list(iter_corpus(path))
        assert [(p.docid, p.title, p.text) for p in passages] == [("d1", "First", "one body"), ("d2", "", "two body")]
    assert passages[0].full_text == "First one body"


def test_beir_corpus_optional_title_and_directory_dispatch(tmp_path: Path) -> None:
    _write(tmp_path / "ds", "corpus.jsonl", '{"_id": "a", "text": "x"}\n{"_id": 7, "title": null, "text": "y"}\n')
    passages = list(iter_corpus(tmp_path / "ds"))
    assert [(p.docid, p.title, p.text) for p in passages] == [("a", "", "x"), ("7", "", "y")]


def test_bad_json_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "corpus.jsonl", '{"_id": "1", "text": "a"}\n\n{"_id": "2", "text": \n')
    message = _error(iter_beir_corpus, path)
    assert message.startswith(f"{path}:3: invalid JSON")


def test_missing_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "corpus.jsonl", '{"_id": "1", "text": "a"}\n{"title": "t", "text": "b"}\n')
    assert _error(iter_corpus, path) == f"{path}:2: missing field '_id'"
    queries = _write(tmp_path, "queries.jsonl", '{"_id": "q1"}\n')
    assert _error(read_beir_queries, queries) == f"{queries}:1: missing field 'text'"


def test_duplicate_docid(tmp_path: Path) -> None:
    lines = ['{"_id": "1", "text": "a"}', '{"_id": "2", "text": "b"}', "", '{"_id": "1", "text": "c"}']
    path = _write(tmp_path, "corpus.jsonl", "\n".join(lines) + "\n")
    assert _error(iter_beir_corpus, path) == f"{path}:4: duplicate docid '1'"
    tsv = _write(tmp_path, "corpus.tsv", "x\tone\ny\ttwo\nx\tthree\n")
    assert _error(iter_tsv_corpus, tsv) == f"{tsv}:3: duplicate docid 'x'"


def test_tsv_wrong_column_count(tmp_path: Path) -> None:
    path = _write(tmp_path, "corpus.tsv", "id\ttitle\ttext\nd1\tT\tbody\nd2\tbody without title\n")
    message = _error(iter_tsv_corpus, path)
    assert message.startswith(f"{path}:3: expected 3 tab-separated columns")
    assert message.endswith("got 2")
    no_tab = _write(tmp_path, "one_column.tsv", "d1\tbody\nd2 body\n")
    assert _error(iter_corpus, no_tab).startswith(f"{no_tab}:2: expected 2 tab-separated columns")
    too_many = _write(tmp_path, "four.tsv", "d1\ta\tb\tc\n")
    assert _error(iter_corpus, too_many).startswith(f"{too_many}:1: expected 2 or 3 tab-separated columns")
    queries = _write(tmp_path, "queries.tsv", "1\tfine\n2 no tab\n")
    assert _error(read_tsv_queries, queries).startswith(f"{queries}:2: expected 'qid<TAB>text'")


def test_qrels_non_integer_relevance(tmp_path: Path) -> None:
    trec = _write(tmp_path, "qrels.txt", "q1 Q0 d1 1\nq1 Q0 d2 1.5\n")
    assert _error(read_trec_qrels, trec) == f"{trec}:2: relevance must be an integer, got '1.5'"
    beir = _write(tmp_path, "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n")
    assert _error(read_beir_qrels, beir) == f"{beir}:3: relevance must be an integer, got 'high'"
    assert read_beir_qrels(_write(tmp_path, "ok.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")) == {"q1": {"d1": 2}}


def test_qrels_bad_records(tmp_path: Path) -> None:
    short = _write(tmp_path, "short.txt", "q1 Q0 d1 1\nq1 d2 1\n")
    assert _error(read_trec_qrels, short).startswith(f"{short}:2: expected 4 whitespace-separated columns")
    dup = _write(tmp_path, "dup.txt", "q1 0 d1 1\nq1 0 d1 0\n")
    assert _error(read_trec_qrels, dup) == f"{dup}:2: duplicate judgement for query 'q1' and docid 'd1'"


def test_missing_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    with pytest.raises(DatasetFormatError, match="corpus.jsonl: file not found"):
        iter_corpus(missing)  # raised at call time, before iteration
    for read in (read_beir_queries, read_tsv_queries, read_trec_qrels, read_trec_topics, read_dl_pool_json):
        assert _error(read, tmp_path / "absent.txt") == f"{tmp_path / 'absent.txt'}: file not found"
    odd = _write(tmp_path, "corpus.csv", "a,b\n")
    assert "unknown corpus format" in _error(iter_corpus, odd)
    assert "not a dataset directory" in _error(lambda root: load_dataset(root, "test"), tmp_path)


def test_load_beir_judged_query_missing(tmp_path: Path) -> None:
    _write(tmp_path, "corpus.jsonl", '{"_id": "d1", "text": "x"}\n')
    _write(tmp_path, "queries.jsonl", '{"_id": "q1", "text": "one"}\n{"_id": "q2", "text": "two"}\n')
    _write(tmp_path, "qrels/test.tsv", "query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    dataset = load_dataset(tmp_path, "test")
    assert dataset.queries == {"q2": "two"} and dataset.qrels == {"q2": {"d1": 1}}
    _write(tmp_path, "qrels/train.tsv", "query-id\tcorpus-id\tscore\nq9\td1\t1\n")
    message = _error(lambda root: load_beir(root, "train"), tmp_path)
    assert message == f"{tmp_path / 'qrels' / 'train.tsv'}: 1 judged queries are not in queries.jsonl: 'q9'"


def test_sgml_topics(tmp_path: Path) -> None:
    text = (
        "<top>\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\n"
        "Identify organizations.\n</top>\n<top>\n<num> Number: 302\n<title> Poliomyelitis\nand Post-Polio\n</top>\n"
    )
    path = _write(tmp_path, "topics.301-302.txt", text)
    assert read_trec_topics(path) == {"301": "International Organized Crime", "302": "Poliomyelitis and Post-Polio"}
    unclosed = _write(tmp_path, "unclosed.txt", "<DOC>\n<DOCNO> 1 </DOCNO>\nfirst\n</DOC>\n<DOC>\n<DOCNO> 2 </DOCNO>\n")
    assert _error(read_trec_topics, unclosed) == f"{unclosed}:5: <DOC> block is never closed"


def test_dl_pool_errors(tmp_path: Path) -> None:
    def hit(qid: int, docid: str, score: object = 1.0) -> dict[str, object]:
        return {"content": f"text of {docid}", "qid": qid, "docid": docid, "rank": 1, "score": score}

    good = [{"query": "q one", "hits": [hit(1, "a", 2.0), hit(1, "b")]}, {"query": "q two", "hits": [hit(2, "a")]}]
    pool = read_dl_pool_json(_write(tmp_path, "good.json", json.dumps(good)))
    assert pool.queries == {"1": "q one", "2": "q two"}
    assert pool.run == {"1": {"a": 2.0, "b": 1.0}, "2": {"a": 1.0}}
    assert sorted(pool.passages) == ["a", "b"]

    mixed = _write(tmp_path, "mixed.json", json.dumps([{"query": "q", "hits": [hit(1, "a"), hit(2, "b")]}]))
    assert _error(read_dl_pool_json, mixed) == f"{mixed}: entry 1, hit 2: qid '2' differs from the entry's qid '1'"
    no_score = _write(tmp_path, "score.json", json.dumps([{"query": "q", "hits": [hit(1, "a", "high")]}]))
    assert _error(read_dl_pool_json, no_score).startswith(f"{no_score}: entry 1, hit 1: 'score' must be a number")
    broken = _write(tmp_path, "broken.json", '[\n  {"query": "q",\n   "hits": [}\n]')
    assert _error(read_dl_pool_json, broken).startswith(f"{broken}:3: invalid JSON")


def test_dl19_pools_as_a_dataset(data: Path) -> None:
    root = data / "msmarco_trec_dl" / "dl19"
    dataset = load_dataset(root, "test")  # the only judged year in the directory
    assert len(dataset.queries) == 43 and sum(len(j) for j in dataset.qrels.values()) == 9260
    docids = [p.docid for p in dataset.iter_corpus()]
    assert len(docids) == len(set(docids)) == 10852  # the union of the five pools
    assert load_dataset(root, "dl19").queries == dataset.queries
    with pytest.raises(DatasetFormatError, match="available: dl19"):
        load_dataset(root, "dl20")
    dl21 = load_dataset(data / "msmarco_trec_dl" / "dl21_dl22_v2", "dl21")
    assert len(dl21.queries) == 53


def test_unjudged_dl_topics_are_the_unlabelled_queries(data: Path) -> None:
    root = data / "msmarco_trec_dl" / "dl21_dl22_v2"
    judged = load_dataset(root, "dl21").queries
    dl21, dl22 = load_unjudged_queries(root, "dl21"), load_unjudged_queries(root, "dl22")
    assert len(dl21) == 477 - 53 and len(dl22) == 500  # DL22 has no qrels here
    assert not set(dl21) & set(judged) and not set(dl22) & set(judged)
    assert list(dl21) == [q for q in read_trec_topics(root / "topics.dl21.txt") if q not in judged]  # topic order
    with pytest.raises(DatasetFormatError, match=r"no topics file topics\.dl20\*\.txt \(topic sets: dl21, dl22\)"):
        load_unjudged_queries(root, "dl20")
    with pytest.raises(DatasetFormatError, match="not a TREC DL pool directory"):
        load_unjudged_queries(data / "scifact", "train")
