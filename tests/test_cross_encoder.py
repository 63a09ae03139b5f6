"""The cross-encoder (scoring, heads, saving, attention maps), the teacher score, and evaluate's rerank mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.cross_encoder import (
    CrossEncoder,
    TeacherFusion,
    teacher_scores,
    update_config,
)
from retrieval.errors import EncoderError

QUERIES = ["what causes heart disease", "the history of the bicycle", "heart"]
PASSAGES = [
    "Heart disease is caused by many factors, including high blood pressure and smoking habits over years.",
    "The bicycle was invented in the nineteenth century.",
    "A short one.",
]


@pytest.fixture(scope="module", params=["mean", "pooler"])
def saved_model(request, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = CrossEncoder.from_backbone(tiny_model_dir, head=request.param, max_length=48, seed=1)
    import torch

    with torch.no_grad():  # an untrained head scores (nearly) every pair alike: give it weights
        model.head_parameters()[0].normal_(0, 1.0)
    return model.save_pretrained(tmp_path_factory.mktemp(f"ce-{request.param}") / "model")


def test_scores_are_batch_and_order_independent(saved_model: Path) -> None:
    model = CrossEncoder.from_pretrained(saved_model)
    together = model.score(QUERIES, PASSAGES, batch_size=2)
    alone = np.array([model.score([q], [p])[0] for q, p in zip(QUERIES, PASSAGES)])
    assert together.shape == (3,) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert len(set(np.round(together, 5))) == 3  # the pairs are told apart
    with pytest.raises(ValueError, match="2 queries for 3 passages"):
        model.score(QUERIES[:2], PASSAGES)


def test_save_load_round_trip_and_fingerprint(saved_model: Path, tmp_path: Path) -> None:
    model = CrossEncoder.from_pretrained(saved_model)
    assert model.fingerprint and model.config.max_length == 48
    again = CrossEncoder.from_pretrained(model.save_pretrained(tmp_path / "copy"))
    assert again.fingerprint == model.fingerprint
    np.testing.assert_allclose(again.score(QUERIES, PASSAGES), model.score(QUERIES, PASSAGES), atol=1e-6)
    # a changed config without a new fingerprint is refused
    config = json.loads((tmp_path / "copy" / "cross_encoder_config.json").read_text())
    config["max_length"] = 64
    (tmp_path / "copy" / "cross_encoder_config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="fingerprint"):
        CrossEncoder.from_pretrained(tmp_path / "copy")


def test_loads_as_a_sentence_transformers_cross_encoder(saved_model: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    ours = CrossEncoder.from_pretrained(saved_model).score(QUERIES, PASSAGES)
    theirs = st.CrossEncoder(str(saved_model), device="cpu").predict(list(zip(QUERIES, PASSAGES)))
    np.testing.assert_allclose(np.asarray(theirs), ours, atol=1e-4)


def test_attention_maps_have_token_shapes_and_offsets(saved_model: Path) -> None:
    model = CrossEncoder.from_pretrained(saved_model)  # sdpa: switched to eager on demand
    maps = model.attentions(QUERIES, PASSAGES, layers=(0, -1), batch_size=2)
    assert model.transformer.config._attn_implementation == "eager"
    assert len(maps) == 3
    for query, passage, pair in zip(QUERIES, PASSAGES, maps):
        q_tokens = model.tokenizer(query, add_special_tokens=False)["input_ids"]
        assert pair.attention.shape == (len(q_tokens), len(pair.passage_offsets))
        assert pair.query_offsets.shape == (len(q_tokens), 2)
        assert np.all(pair.attention >= 0) and np.all(pair.attention.sum(axis=1) < 1.0 + 1e-5)
        # offsets point into each text: the first query token starts the query, passage tokens are its words
        start, end = pair.query_offsets[0]
        assert query[start:end].lower() == query.split()[0][: end - start].lower()
        words = passage.lower()
        assert all(0 <= s < e <= len(passage) for s, e in pair.passage_offsets)
        assert "".join(words[s:e] for s, e in pair.passage_offsets).replace(" ", "") != ""
    # the long passage was truncated to max_length: 1 CLS + 2 SEP + query + passage tokens
    assert len(maps[0].query_offsets) + len(maps[0].passage_offsets) + 3 <= 48
    with pytest.raises(Exception, match="out of range"):
        model.attentions(QUERIES[:1], PASSAGES[:1], layers=(7,))


def test_missing_or_bad_directories_are_one_line_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(EncoderError, match="no config.json"):
        CrossEncoder.from_pretrained(tmp_path)
    with pytest.raises(EncoderError, match="not a cross-encoder directory"):
        CrossEncoder.from_pretrained(tiny_model_dir)  # a dual encoder, not a cross-encoder
    with pytest.raises(ValueError, match="head must be"):
        CrossEncoder.from_backbone(tiny_model_dir, head="cls")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ teacher score
def _z(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return (array - array.mean()) / array.std()


def test_teacher_score_without_fusion_is_the_cross_encoder() -> None:
    np.testing.assert_array_equal(teacher_scores(["a", "b"], [2.0, -1.0]), [2.0, -1.0])


def test_fused_teacher_score_is_two_step_zscore_fusion() -> None:
    docids = ["a", "b", "c", "d"]
    ce = [3.0, 1.0, 0.0, 2.0]
    bm25 = [10.0, 12.0, None, 4.0]  # c: not scored by BM25 -> BM25's lowest score among the candidates
    dense = [0.5, 0.7, 0.6, 0.1]
    fusion = TeacherFusion(cross_encoder_weight=0.6, first_stage_weight=0.4, dense_weight=0.3, bm25_weight=0.7)
    got = teacher_scores(docids, ce, bm25=bm25, dense=dense, fusion=fusion)
    first = 0.3 * _z(dense) + 0.7 * _z([10.0, 12.0, 4.0, 4.0])
    expected = 0.6 * _z(ce) + 0.4 * _z(first.tolist())
    np.testing.assert_allclose(got, expected, atol=1e-9)
    # all weight on the cross-encoder keeps its order
    only_ce = TeacherFusion(cross_encoder_weight=1.0, first_stage_weight=0.0)
    assert list(np.argsort(-teacher_scores(docids, ce, bm25, dense, only_ce))) == list(np.argsort(-np.array(ce)))
    with pytest.raises(ValueError, match="cannot both be 0"):
        TeacherFusion(cross_encoder_weight=0.0, first_stage_weight=0.0)
    with pytest.raises(ValueError, match="3 bm25 scores for 4"):
        teacher_scores(docids, ce, bm25=bm25[:3], dense=dense, fusion=fusion)


def test_update_config_records_fusion_and_refingerprints(saved_model: Path, tmp_path: Path) -> None:
    copy = CrossEncoder.from_pretrained(saved_model).save_pretrained(tmp_path / "m")
    before = CrossEncoder.from_pretrained(copy).fingerprint
    updated = update_config(copy, fusion=TeacherFusion(cross_encoder_weight=0.7, first_stage_weight=0.3).model_dump())
    loaded = CrossEncoder.from_pretrained(copy)
    assert loaded.config.fusion is not None and loaded.config.fusion.cross_encoder_weight == 0.7
    assert loaded.fingerprint == updated.fingerprint != before


# ------------------------------------------------------------------------- evaluate: rerank mode
def test_evaluate_rerank_mode(saved_model: Path, noveleval: Path, tiny_index: Path, tmp_path: Path) -> None:
    from evaluation.evaluate import main as evaluate_main

    out, cache = tmp_path / "eval.json", tmp_path / "scores.jsonl"
    argv = ["--dataset", str(noveleval), "--retriever", "bm25", "--rerank", str(saved_model), "--rerank-first-stage", "bm25",
            "--rerank-depth", "5", "--depth", "50", "--score-cache", str(cache), "--output", str(out), "--threads", "1"]
    assert evaluate_main(argv) == 0
    systems = json.loads(out.read_text())["systems"]
    assert set(systems) == {"bm25", "rerank-bm25"}
    rerank = systems["rerank-bm25"]["rerank"]
    assert rerank["first_stage"] == "bm25" and rerank["score"] == "cross_encoder"
    assert rerank["pairs"] == sum(1 for line in cache.read_text().splitlines()[1:])  # every pair scored once, cached
    assert 0 < rerank["pairs"] <= 21 * 5
    # reranking permutes the top 5 and keeps the first stage's tail: the same 50 docids, so R@50 is unchanged
    assert systems["rerank-bm25"]["metrics"]["R@50"] == pytest.approx(systems["bm25"]["metrics"]["R@50"])
    assert evaluate_main(argv) == 0  # again: all scores come from the cache
    assert json.loads(out.read_text())["systems"]["rerank-bm25"]["rerank"]["pairs"] == 0

    # with fitted fusion weights the fused teacher is reported too; all weight on BM25 reproduces BM25's top 5 order
    fused_dir = CrossEncoder.from_pretrained(saved_model).save_pretrained(tmp_path / "fused")
    from retrieval.retriever import Retriever

    retriever = Retriever.open(tiny_index)
    fingerprint = retriever.encoder.fingerprint
    retriever.close()
    update_config(fused_dir, fusion=TeacherFusion(cross_encoder_weight=0.0, first_stage_weight=1.0, dense_weight=0.0,
                                                  bm25_weight=1.0, dense_encoder_fingerprint=fingerprint).model_dump())
    argv = ["--dataset", str(noveleval), "--retriever", "bm25", "--rerank", str(fused_dir), "--index", str(tiny_index),
            "--rerank-depth", "10", "--depth", "10", "--output", str(out), "--threads", "1", "--run-dir", str(tmp_path / "runs")]
    assert evaluate_main(argv) == 0
    systems = json.loads(out.read_text())["systems"]
    assert systems["fused-rerank-bm25"]["metrics"]["nDCG@10"] == pytest.approx(systems["bm25"]["metrics"]["nDCG@10"])
    assert (tmp_path / "runs" / "fused-rerank-bm25.trec").is_file()


def test_evaluate_rerank_user_errors(saved_model: Path, noveleval: Path, capsys) -> None:
    from evaluation.evaluate import main as evaluate_main

    assert evaluate_main(["--dataset", str(noveleval), "--rerank", str(saved_model), "--rerank-score", "fused"]) == 2
    assert "no fitted fusion weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--dataset", str(noveleval), "--rerank", str(saved_model), "--rerank-first-stage", "run"])


def test_a_published_runs_recall_is_cut_at_its_own_depth(saved_model: Path, noveleval: Path, tmp_path: Path) -> None:
    from retrieval.datasets import load_dataset
    from evaluation.evaluate import main as evaluate_main

    # a published list of 10 hits a query (the TREC DL runs hold 100): R@50 and deeper would be R@10 misnamed
    qrels = load_dataset(noveleval, "test").qrels
    run_file = tmp_path / "published.trec"
    run_file.write_text("".join(f"{q} Q0 {d} {rank} {20 - rank} published\n"
                                for q, judged in qrels.items() for rank, d in enumerate(list(judged)[:10], 1)))
    out = tmp_path / "eval.json"
    assert evaluate_main(["--dataset", str(noveleval), "--retriever", "bm25", "--rerank", str(saved_model),
                          "--rerank-first-stage", "run", "--first-stage-run", str(run_file), "--rerank-depth", "5",
                          "--depth", "1000", "--output", str(out), "--threads", "1"]) == 0
    systems = json.loads(out.read_text())["systems"]
    for name in ("run", "rerank-run"):
        assert systems[name]["omitted_metrics"] == ["R@50", "R@100", "R@1000"]
        assert set(systems[name]["metrics"]) == {"nDCG@10", "MRR@10"}
    assert "omitted_metrics" not in systems["bm25"] and "R@1000" in systems["bm25"]["metrics"]
