"""Shared fixtures: a tiny random BERT dual encoder and real data slices. Everything offline.

Test modules share code through this file only; they never import each other.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval.paths import data_dir  # noqa: E402

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def noveleval_dir() -> Path:
    path = data_dir() / "noveleval"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def noveleval() -> Path:
    """The real NovelEval collection (21 queries, 420 passages)."""
    return noveleval_dir()


def _vocab_from(texts: list[str], size: int) -> list[str]:
    words = Counter(w for t in texts for w in re.findall(r"[a-z0-9]+", t.lower()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = ["##" + ch for ch in letters]
    common = [w for w, _ in words.most_common(size) if w not in letters]
    return SPECIAL_TOKENS + letters + pieces + common


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-dim random BERT with a word vocabulary from NovelEval, saved as a DualEncoder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    from retrieval.encoder import DualEncoder

    corpus_file = data_dir() / "noveleval" / "corpus.tsv"
    texts = corpus_file.read_text(encoding="utf-8").splitlines() if corpus_file.is_file() else []
    vocab = _vocab_from(texts, 1500)
    raw = tmp_path_factory.mktemp("tiny-bert-raw")
    tokenizer = BertTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(raw)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(raw)
    encoder = DualEncoder.from_pretrained(raw)
    encoder.config = encoder.config.model_copy(update={"max_query_length": 32, "max_passage_length": 96})
    return encoder.save_pretrained(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir: Path):
    from retrieval.encoder import DualEncoder

    return DualEncoder.from_pretrained(tiny_model_dir)


def _copy_model(source: Path, target: Path) -> Path:
    """A copy of the model directory ``source`` at ``target``, without its ONNX export (``onnx/``)."""
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("onnx"))
    return target


@pytest.fixture(scope="session")
def copy_model() -> Callable[[Path, Path], Path]:
    """``copy_model(source, target) -> target``: a private copy of a model directory without its
    ONNX export, for tests that export, break or check a model of their own."""
    return _copy_model


@pytest.fixture(scope="session")
def exported_model(tiny_model_dir: Path, noveleval: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny model, exported to ONNX and parity-checked on NovelEval by
    ``md2pr-export`` (one thread), once per session. Read only: ``copy_model`` it to change it."""
    from index_build.export_cli import main as export_main

    model = _copy_model(tiny_model_dir, tmp_path_factory.mktemp("exported") / "model")
    assert export_main(["--encoder", str(model), "--parity-dataset", str(noveleval), "--threads", "1"]) == 0
    return model


def _wait_until_ready(get: Callable[[str], object], limit_s: float = 60.0) -> None:
    """Poll ``get("/readyz")`` every 20 ms until it answers 200; fail the test after ``limit_s``."""
    import time

    deadline = time.monotonic() + limit_s
    while (response := get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"the service did not become ready in {limit_s:g} s: {response.text}"
        time.sleep(0.02)


@pytest.fixture(scope="session")
def wait_until_ready() -> Callable[..., None]:
    """``wait_until_ready(client.get, limit_s=60)``: poll a started app's ``/readyz`` until 200
    (the index loads in the background after startup)."""
    return _wait_until_ready


@pytest.fixture(scope="module")
def one_thread():
    """One torch/FAISS thread for a module: tiny models on a shared 2-core machine run faster and steadier so."""
    import torch

    from retrieval.runtime import configure_threads

    before = torch.get_num_threads()
    configure_threads(1)
    yield
    configure_threads(before)


@pytest.fixture
def still_one_thread(one_thread):
    """``one_thread`` set again before each test: a CLI called in a test sets its own thread count."""
    from retrieval.runtime import configure_threads

    configure_threads(1)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A tiny cross-encoder directory on the tiny BERT (mean head, 48 tokens), its head drawn at
    random with a large spread so its scores differ from pair to pair. Shared: only read it."""
    import torch

    from retrieval.cross_encoder import CrossEncoder

    teacher = CrossEncoder.from_backbone(tiny_model_dir, head="mean", max_length=48, seed=5)
    with torch.no_grad():
        teacher.model.dense.weight.normal_(0, 1.0)
    return teacher.save_pretrained(tmp_path_factory.mktemp("tiny-teacher") / "teacher")


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path):
    """A private copy of the tiny encoder (other tests may change the shared one in place)."""
    from retrieval.encoder import DualEncoder

    return DualEncoder.from_pretrained(tiny_model_dir)


_TINY_INDEXES: dict[tuple[Path, Path], Path] = {}


def build_tiny_index(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    """NovelEval indexed with the tiny encoder by ``md2pr-build-index`` (an index root), built once per session.

    Every caller gets the same root: only read it. Tests take it as the ``tiny_index`` fixture.
    """
    key = (noveleval, tiny_model_dir)
    if key not in _TINY_INDEXES:
        from index_build.cli import main as build_main

        root = tmp_path_factory.mktemp("noveleval-tiny-index")
        argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"]
        assert build_main(argv) == 0
        _TINY_INDEXES[key] = root
    return _TINY_INDEXES[key]


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path) -> Path:
    """NovelEval indexed with the tiny encoder (an index root with a dense and a BM25 side), shared: read only."""
    return build_tiny_index(tmp_path_factory, noveleval, tiny_model_dir)


@pytest.fixture(scope="session")
def mine_noveleval(noveleval: Path, tiny_index: Path) -> Callable[..., Path]:
    """A function that writes a training file mined from NovelEval's test split, as ``md2pr-mine`` would.

    ``mine_noveleval(path, depth, queries=None) -> path``: the first ``queries`` test queries (all
    21 by default), negatives from BM25 and ``tiny_index``, ``depth`` from each source; the header
    names both sources (the dense one with the tiny encoder's fingerprint).
    """

    def write(path: Path, depth: int, queries: int | None = None) -> Path:
        from retrieval.bm25 import BM25Index
        from retrieval.datasets import load_dataset
        from retrieval.retriever import Retriever
        from training.data import TrainingHeader, write_training_file
        from training.mining import dense_source_info, mine

        dataset = load_dataset(noveleval, "test")
        if queries is not None:
            dataset = type(dataset)(dataset.corpus_path, dict(list(dataset.queries.items())[:queries]), dataset.qrels)
        bm25 = BM25Index.build(dataset.iter_corpus())
        retriever = Retriever.open(tiny_index)
        try:
            records = list(mine(dataset, bm25, retriever, depth=depth, show_progress=False))
            header = TrainingHeader(
                dataset=str(noveleval), split="test", depth=depth,
                sources={"bm25": bm25.config.to_dict(), "dense": dense_source_info(retriever)},
            )
        finally:
            retriever.close()
        write_training_file(path, header, records)
        return path

    return write


@pytest.fixture(scope="session")
def noveleval_dl(tmp_path_factory: pytest.TempPathFactory, noveleval: Path) -> Path:
    """NovelEval rewritten in the TREC DL pool layout, as a year ``nov`` whose last 7 of 21 topics
    are unjudged (the unlabelled queries of a DL directory): ``topics.nov.txt``,
    ``qrels.nov-passage.txt`` (14 queries) and ``BM25/retrieve_results_nov.json`` (each query's
    20 passages as its pool)."""
    import json

    from retrieval.datasets import iter_corpus, read_trec_qrels, read_tsv_queries

    root = tmp_path_factory.mktemp("noveleval-dl") / "nov"
    (root / "BM25").mkdir(parents=True)
    queries = read_tsv_queries(noveleval / "queries.tsv")
    qrels = read_trec_qrels(noveleval / "qrels.txt")
    passages = {p.docid: p for p in iter_corpus(noveleval)}
    judged = list(queries)[:14]
    (root / "topics.nov.txt").write_text("".join(f"{q}\t{t}\n" for q, t in queries.items()))
    (root / "qrels.nov-passage.txt").write_text(
        "".join(f"{q} Q0 {d} {r}\n" for q in judged for d, r in qrels[q].items()))
    pools = [{"query": text, "hits": [{"content": passages[d].full_text, "qid": int(q), "docid": d, "rank": i,
                                       "score": float(20 - i)} for i, d in enumerate(qrels[q], 1)]}
             for q, text in queries.items()]
    (root / "BM25" / "retrieve_results_nov.json").write_text(json.dumps(pools))
    return root
