"""Query-tower distillation (``train_tower="query"``): the frozen passage bank, its targets, model
selection with the base student taking part, the unseen-positive subset, pairing, and a run end
to end (with kill and resume) on NovelEval with tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.encoder import DualEncoder
from retrieval.metrics import subset, unseen_positive_queries
from training.data import load_training_file
from training.distill import DistillConfig, Group, distill
from training.distill.bank import PAIRING_FILE, PassageBank, bank_targets, read_pairing
from training.distill.selection import select_iteration, selection_score
from training.errors import TrainingError
from training.false_negatives import FilteredQuery


# One torch/FAISS thread (conftest's one_thread, set again before every test by still_one_thread):
# the resumed run must use the same count as the uninterrupted one.
pytestmark = pytest.mark.usefixtures("one_thread", "still_one_thread")


# ----------------------------------------------------------------------- pure functions
def test_unseen_positive_queries_from_qrels() -> None:
    seen = {"a": {"d1": 1, "d2": 0}, "b": {"d3": 2}}
    qrels = {
        "q1": {"d1": 1},  # its positive is a seen positive
        "q2": {"d2": 1, "d9": 0},  # d2 was judged in "seen" but as not relevant: unseen
        "q3": {"d3": 1, "d4": 1},  # one of two positives seen: not in the subset
        "q4": {"d5": 0},  # no positive at all: left out
        "q5": {"d6": 1},
    }
    assert unseen_positive_queries(qrels, seen) == ["q2", "q5"]
    # with relevance level 2, d3 (grade 2) is still seen, d1 (grade 1) no longer is a positive anywhere
    assert unseen_positive_queries({"q1": {"d1": 2}, "q3": {"d3": 2}}, seen, relevance_level=2) == ["q1"]
    assert subset(qrels, ["q5", "nope"]) == {"q5": {"d6": 1}}


def test_unseen_positive_subset_of_scifact_test(scifact_or_skip: Path) -> None:
    from retrieval.datasets import load_dataset

    test, train = load_dataset(scifact_or_skip, "test"), load_dataset(scifact_or_skip, "train")
    unseen = unseen_positive_queries(test.qrels, train.qrels)
    assert len(test.qrels) == 300 and len(unseen) == 104  # the figure issue 14 names


@pytest.fixture
def scifact_or_skip() -> Path:
    from retrieval.paths import data_dir

    path = data_dir() / "scifact"
    if not (path / "qrels" / "test.tsv").is_file():
        pytest.skip("SciFact not found")
    return path


def test_bank_targets_mask_the_other_positives_and_the_excluded() -> None:
    column = {d: i for i, d in enumerate(["p1", "p2", "n1", "n2", "x", "p3"])}
    views = {
        "q1": FilteredQuery("q1", "first", ("p1", "p2"), ("n1",), ("x",)),
        "q2": FilteredQuery("q2", "second", ("p3",), ("n2",), ()),
    }
    groups = [Group("q1", "first", "p2", ("n1",)), Group("q2", "second", "p3", ())]
    lists = {"q1": [("p1", 3.0), ("n1", 1.0), ("gone", 9.0)], "q2": [("p3", 2.0), ("n2", 0.5), ("n1", -1.0)]}
    t = bank_targets(groups, views, column, lists, passages=6)
    assert t.positive_mask.tolist() == [[False, True, False, False, False, False], [False] * 5 + [True]]
    # q1: its other positive p1 and its dropped false negative x leave the denominator; q2 keeps all
    assert t.valid_mask.tolist() == [[False, True, True, True, False, True], [True] * 6]
    # KD lists: bank rows of the candidates ("gone" is not in the bank), padded and masked
    assert t.kd_index.tolist() == [[0, 2, 0], [5, 3, 2]]
    assert t.kd_teacher.tolist() == [[3.0, 1.0, 0.0], [2.0, 0.5, -1.0]]
    assert t.kd_mask.tolist() == [[True, True, False], [True, True, True]]
    with pytest.raises(TrainingError, match="not in the passage bank"):
        bank_targets([Group("q2", "second", "missing", ())], views, column, lists, passages=6)


def test_selection_score_and_the_base_takes_part() -> None:
    dev, unseen = {"nDCG@10": 0.6}, {"nDCG@10": 0.4}
    assert selection_score(dev, unseen, "dev") == 0.6
    assert selection_score(dev, unseen, "dev-unseen") == 0.4
    assert selection_score(dev, unseen, "dev-mean") == pytest.approx(0.5)
    assert selection_score(dev, None, "dev-unseen") == 0.6  # an empty subset falls back to the full dev set
    assert selection_score(None, None, "dev") == float("-inf")
    base = {"iteration": 0, "dev": {"nDCG@10": 0.5}, "dev_unseen": {"nDCG@10": 0.5}}
    worse = [{"iteration": 1, "dev": {"nDCG@10": 0.45}, "dev_unseen": {"nDCG@10": 0.6}},
             {"iteration": 2, "dev": {"nDCG@10": 0.48}, "dev_unseen": {"nDCG@10": 0.3}}]
    assert select_iteration(base, worse, "best", "dev")["iteration"] == 0  # never ship worse than the base
    assert select_iteration(base, worse, "best", "dev-unseen")["iteration"] == 1
    assert select_iteration(base, worse, "best", "dev-mean")["iteration"] == 1  # 0.525 > 0.5
    assert select_iteration(base, worse, "last", "dev")["iteration"] == 2
    tie = [{"iteration": 1, "dev": {"nDCG@10": 0.5}, "dev_unseen": None}]
    assert select_iteration(base, tie, "best", "dev")["iteration"] == 1  # a tie goes to the later one
    assert select_iteration(None, worse, "best", "dev")["iteration"] == 2


def test_query_tower_settings_are_checked() -> None:
    with pytest.raises(TrainingError, match="word-level KD"):
        DistillConfig(dataset="x", teacher="t", train_tower="query", word_weight=0.1)
    with pytest.raises(TrainingError, match="train_tower"):
        DistillConfig(dataset="x", teacher="t", train_tower="passage")
    with pytest.raises(TrainingError, match="select_on"):
        DistillConfig(dataset="x", teacher="t", select_on="test")
    with pytest.raises(TrainingError, match="kd_loss"):
        DistillConfig(dataset="x", teacher="t", kd_loss="mse")
    assert DistillConfig(dataset="x", teacher="t", kd_loss="margin_mse").to_dict()["kd_loss"] == "margin_mse"
    # one query a batch and no hard negatives is fine in query mode: the whole bank is its negatives
    assert DistillConfig(dataset="x", teacher="t", train_tower="query", word_weight=0, negatives=0, queries_per_batch=1)


# --------------------------------------------------------------------------- end to end
def _config(noveleval: Path, teacher: Path | str, student: Path, **changes) -> DistillConfig:
    values = dict(
        dataset=str(noveleval), split="test", teacher=str(teacher) if teacher else "", student=str(student), train_tower="query",
        iterations=2, epochs=2, queries_per_batch=4, mining_depth=6, negative_depth=6, teacher_batch_size=16,
        encode_batch_size=64, lr=5e-3, word_weight=0.0, filter_percentile=50.0, filter_margin=0.5, dev_depth=20,
        save_every=1, seed=3, select="last",
    )
    values.update(changes)
    return DistillConfig(**values)


@pytest.fixture(scope="module")
def query_run(
    tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, one_thread
) -> dict:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("query") / "run"
    config = _config(noveleval, tiny_teacher, tiny_model_dir)
    return {"out": out, "config": config, "report": distill(config, out, show_progress=False)}


def test_query_tower_run_trains_against_the_frozen_bank(query_run: dict, tiny_model_dir: Path) -> None:
    out, report = query_run["out"], query_run["report"]
    assert report["finished"] and report["train_tower"] == "query" and [i["iteration"] for i in report["iterations"]] == [1, 2]
    assert not (out / "indexes" / "s1").exists()  # the corpus is never re-encoded: only the base index exists
    base = DualEncoder.from_pretrained(tiny_model_dir)
    bank = PassageBank.from_index(out / "indexes" / "s0")
    assert bank.encoder_fingerprint == base.fingerprint and bank.vectors.shape == (len(bank.docids), base.dimension)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"loss", "contrastive", "sentence_kd", "lr"} <= set(log[0]) and "word_kd" not in log[0]
    for line in log:  # total = InfoNCE + sentence KD (weights 1, 1)
        assert line["loss"] == pytest.approx(line["contrastive"] + line["sentence_kd"], abs=2e-4)
    it1 = report["iterations"][0]
    train = it1["train"]
    assert train["tower"] == "query" and train["bank_passages"] == len(bank.docids) and train["kd_list_mean"] > 1
    # every epoch measured on dev and on its unseen-positive subset, epoch 0 (the start) included
    assert [e["epoch"] for e in train["epochs"]] == [0, 1, 2] and train["selected_epoch"] in (0, 1, 2)
    assert train["epochs"][0]["dev"] == report["base_dev"]
    assert set(it1["dev"]) == {"nDCG@10", "MRR@10", "R@100"}
    epochs_file = [json.loads(x) for x in (out / "iter-01" / "epochs.jsonl").read_text().splitlines()]
    assert epochs_file == train["epochs"]
    # the kept student pairs with the base encoder's passage vectors
    student = DualEncoder.from_pretrained(out / "iter-01" / "student")
    pairing = read_pairing(out / "iter-01" / "student")
    if train["selected_epoch"] == 0:
        assert student.fingerprint == base.fingerprint and pairing is None
    else:
        assert student.fingerprint != base.fingerprint
        assert pairing["passage_encoder"]["fingerprint"] == base.fingerprint and pairing["tower"] == "query"
        assert pairing["query_encoder_fingerprint"] == student.fingerprint
    # its dev figure is the kept epoch's
    kept = train["epochs"][train["selected_epoch"]]
    assert it1["dev"] == pytest.approx(kept["dev"])
    # iteration 2 mined with the query-tower student against the base index
    mined = json.loads((out / "iter-02" / "mined.jsonl").read_text().splitlines()[0])
    assert mined["sources"]["dense"]["index"] == str(out / "indexes" / "s0")
    assert (out / "model" / "encoder_config.json").is_file()
    # iteration 2's annotation ran the teacher only on pairs iteration 1 had not scored
    first, second = report["iterations"][0]["annotate"], report["iterations"][1]["annotate"]
    assert first["pairs_scored"] == first["pairs"] > 0
    _, records1 = load_training_file(out / "iter-01" / "annotated.jsonl")
    _, records2 = load_training_file(out / "iter-02" / "annotated.jsonl")
    known = {(r.query, c.docid) for r in records1 for c in r.candidates()}
    new = sum(1 for r in records2 for c in r.candidates() if (r.query, c.docid) not in known)
    assert second["pairs"] == sum(len(r.candidates()) for r in records2) and second["pairs_scored"] == new < second["pairs"]


def test_margin_mse_reaches_the_sentence_term(query_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path,
                                             tmp_path: Path) -> None:
    # the same run's first step with kd_loss="margin_mse": same batch, same start, so the same
    # InfoNCE; only the sentence term (and with it the total) changes
    config = _config(noveleval, tiny_teacher, tiny_model_dir, kd_loss="margin_mse", iterations=1,
                     first_iteration_from=str(query_run["out"]))
    out = tmp_path / "mmse"
    distill(config, out, show_progress=False, stop_after=1)
    ours = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    theirs = json.loads((query_run["out"] / "log.jsonl").read_text().splitlines()[0])
    assert (ours["iteration"], ours["step"]) == (theirs["iteration"], theirs["step"]) == (1, 1)
    assert ours["contrastive"] == pytest.approx(theirs["contrastive"], abs=1e-5)
    assert abs(ours["sentence_kd"] - theirs["sentence_kd"]) > 1e-3
    assert ours["loss"] == pytest.approx(ours["contrastive"] + ours["sentence_kd"], abs=2e-4)


def test_query_tower_run_resumes_exactly(query_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config, out = query_run["config"], tmp_path / "killed"
    first = distill(config, out, show_progress=False, stop_after=3)  # inside iteration 1's second epoch
    assert not first["finished"] and (out / "iter-01" / "checkpoint" / "trainer_state.pt").is_file()
    report = distill(config, out, resume=True, show_progress=False)
    assert report["finished"]
    ours = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    theirs = [json.loads(x) for x in (query_run["out"] / "log.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["step"]) for x in ours] == [(x["iteration"], x["step"]) for x in theirs]
    assert np.allclose([x["loss"] for x in ours], [x["loss"] for x in theirs], atol=1e-4)
    scores = [[e["score"] for e in r["iterations"][0]["train"]["epochs"]] for r in (report, query_run["report"])]
    assert scores[0] == pytest.approx(scores[1])
    a = DualEncoder.from_pretrained(out / "model").fingerprint
    assert a == DualEncoder.from_pretrained(query_run["out"] / "model").fingerprint


def test_selection_keeps_the_base_student_when_training_only_hurts(
    noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.distill.query_phase import QueryTowerPhase

    # every trained epoch measures worse on dev than the base student (whose figure comes from its index)
    worse = {"nDCG@10": 0.0, "MRR@10": 0.0, "R@100": 0.0}
    monkeypatch.setattr(QueryTowerPhase, "dev_measures", lambda self, encoder: (dict(worse), dict(worse)))
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, epochs=2, select="best")
    report = distill(config, tmp_path / "run", show_progress=False)
    assert report["base_dev"]["nDCG@10"] > 0
    train = report["iterations"][0]["train"]
    assert [e["epoch"] for e in train["epochs"]] == [0, 1, 2] and train["selected_epoch"] == 0
    assert report["selected_iteration"] == 0  # the run ships its base, not a worse student
    base = DualEncoder.from_pretrained(tiny_model_dir).fingerprint
    assert DualEncoder.from_pretrained(tmp_path / "run" / "model").fingerprint == base
    assert DualEncoder.from_pretrained(tmp_path / "run" / "iter-01" / "student").fingerprint == base
    assert not (tmp_path / "run" / "model" / PAIRING_FILE).exists()


def test_a_supervised_run_needs_no_teacher(noveleval: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no teacher given"):
        _config(noveleval, "", tiny_model_dir)  # sentence KD and the filter read the teacher
    config = _config(noveleval, "", tiny_model_dir, sentence_weight=0.0, filter_mode="none", iterations=1)
    report = distill(config, tmp_path / "run", show_progress=False)
    assert report["finished"] and not config.needs_teacher
    out = tmp_path / "run"
    assert (out / "iter-01" / "annotated.jsonl").read_bytes() == (out / "iter-01" / "mined.jsonl").read_bytes()
    assert json.loads((out / "config.json").read_text())["teacher"]["fingerprint"] is None
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log and all("sentence_kd" not in x and x["loss"] == pytest.approx(x["contrastive"], abs=1e-5) for x in log)


def test_corpus_titles_are_pseudo_queries_in_a_fixed_spread_order(tmp_path: Path) -> None:
    from training.distill.datasets import CORPUS_TITLES, title_queries, unlabelled_dataset

    lines = [{"_id": f"d{i}", "title": f"Title {i}" if i % 3 else "", "text": f"text {i}"} for i in range(12)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    titles = title_queries(tmp_path)
    assert set(titles) == {f"title:d{i}" for i in range(12) if i % 3}  # untitled passages give no query
    assert titles["title:d4"] == "Title 4" and list(titles) != sorted(titles, key=lambda q: int(q[len("title:d"):]))
    assert list(title_queries(tmp_path)) == list(titles)  # the order is a pure function of the docids
    sample = unlabelled_dataset(tmp_path, tmp_path, [CORPUS_TITLES], limit=3)
    assert list(sample.queries) == list(titles)[:3] and sample.qrels == {}


def test_title_queries_are_labelled_with_their_own_passage(tmp_path: Path) -> None:
    from retrieval.datasets import Dataset
    from training.distill.datasets import title_queries, with_title_queries

    lines = [{"_id": f"d{i}", "title": f"Title {i}", "text": f"text {i}"} for i in range(6)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    judged = Dataset(tmp_path / "corpus.jsonl", {"q": "a claim"}, {"q": {"d1": 1}})
    assert with_title_queries(judged, 0) is judged
    extended = with_title_queries(judged, 2)
    first_two = list(title_queries(tmp_path / "corpus.jsonl"))[:2]
    assert list(extended.queries) == ["q", *first_two] and extended.qrels["q"] == {"d1": 1}
    for qid in first_two:
        assert extended.qrels[qid] == {qid.removeprefix("title:"): 1} and extended.queries[qid].startswith("Title ")


def test_a_run_saved_before_a_setting_existed_resumes(query_run: dict, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "old-run"
    shutil.copytree(query_run["out"], copy)
    saved = json.loads((copy / "config.json").read_text())
    for later in ("filter_rule", "filter_ratio", "filter_score", "score_cache_from"):  # settings added after the run
        del saved["distill"][later]
    (copy / "config.json").write_text(json.dumps(saved))
    report = distill(query_run["config"], copy, resume=True, show_progress=False)
    assert report["finished"] and report["selected_iteration"] == query_run["report"]["selected_iteration"]
    saved["distill"]["lr"] = 1.0  # a setting that did change is still refused
    (copy / "config.json").write_text(json.dumps(saved))
    with pytest.raises(TrainingError, match="different from the saved"):
        distill(query_run["config"], copy, resume=True, show_progress=False)
