"""The distillation trainer end to end on NovelEval with tiny random models (training/distill/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoder import DualEncoder
from training.distill import DistillConfig, Group, batch_targets, distill, hidden_positives, plan_epoch
from training.distill_cli import main as distill_main
from training.errors import TrainingError
from training.false_negatives import FilteredQuery


# One torch/FAISS thread (conftest's one_thread), again before every test (still_one_thread): with
# two on a busy 2-core machine the tiny models ran 10x slower, and every run here must use the same
# count for the resumed run to match the uninterrupted one. The runs shared between tests ask for
# one_thread themselves, so it is in place before they train.
pytestmark = pytest.mark.usefixtures("one_thread", "still_one_thread")


def _config(noveleval: Path, teacher: Path, student: Path, **changes) -> DistillConfig:
    values = dict(
        dataset=str(noveleval), split="test", teacher=str(teacher), student=str(student), iterations=2,
        epochs=1, max_steps=2, queries_per_batch=4, negatives=2, mining_depth=6, negative_depth=6,
        attention_negatives=1, teacher_batch_size=16, encode_batch_size=64, lr=1e-3, word_weight=0.5,
        filter_percentile=50.0, filter_margin=0.5, dev_depth=20, save_every=1, seed=1,
    )
    values.update(changes)
    return DistillConfig(**values)


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, one_thread
) -> dict:
    out = tmp_path_factory.mktemp("distill") / "run"
    config = _config(noveleval, tiny_teacher, tiny_model_dir)
    return {"out": out, "config": config, "report": distill(config, out, show_progress=False)}


def test_two_iterations_run_end_to_end(full_run: dict) -> None:
    out, report = full_run["out"], full_run["report"]
    assert report["finished"] and [i["iteration"] for i in report["iterations"]] == [1, 2]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["step"]) for x in log] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for line in log:  # every term is logged, and the total is their weighted sum
        assert {"loss", "contrastive", "sentence_kd", "word_kd", "lr"} <= set(line)
        assert line["loss"] == pytest.approx(line["contrastive"] + line["sentence_kd"] + 0.5 * line["word_kd"], abs=1e-4)
        assert line["word_pairs"] > 0
    for it in report["iterations"]:
        assert set(it["dev"]) == {"nDCG@10", "MRR@10", "R@100"}
        f = it["filter"]
        assert f["mode"] == "dynamic" and f["negatives"] > 0 and f["floor"] is not None and 0 <= f["flagged"] <= f["negatives"]
        assert it["mine"]["queries"] > 0
    # iteration 1 mines with BM25 and the base student, later ones with the current student only
    assert report["iterations"][0]["mine"]["sources"] == ["bm25", "dense"] and report["iterations"][1]["mine"]["sources"] == ["dense"]
    assert len((out / "iterations.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "config.json").read_text())
    assert saved["distill"] == full_run["config"].to_dict()
    # each iteration's filter decisions and the annotated file it used are kept
    filt = json.loads((out / "iter-02" / "filter.json").read_text())
    assert filt["summary"]["flagged"] == report["iterations"][1]["filter"]["flagged"]
    header = json.loads((out / "iter-02" / "annotated.jsonl").read_text().splitlines()[0])
    assert header["teacher"]["attention"]["dir"].endswith("attention") and header["sources"]["dense"]["encoder"].endswith("iter-01/student")


def test_saved_student_drops_into_index_build(full_run: dict, tmp_path: Path, noveleval: Path, tiny_model_dir: Path) -> None:
    model = full_run["out"] / "model"
    student = DualEncoder.from_pretrained(model)
    assert student.fingerprint == json.loads((model / "encoder_config.json").read_text())["fingerprint"]
    assert student.fingerprint != DualEncoder.from_pretrained(tiny_model_dir).fingerprint  # it was trained
    from index_build.cli import main as build_main
    from retrieval.retriever import Retriever

    root = tmp_path / "index"
    assert build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(model), "--no-progress", "--threads", "1"]) == 0
    retriever = Retriever.open(root)
    try:
        assert retriever.encoder.fingerprint == student.fingerprint and len(retriever.search(["a query"], 3)[0]) == 3
    finally:
        retriever.close()
    st = pytest.importorskip("sentence_transformers")
    vectors = st.SentenceTransformer(str(model), device="cpu").encode(["vitamin b12 and homocysteine"])
    np.testing.assert_allclose(vectors, student.encode_queries(["vitamin b12 and homocysteine"]), atol=1e-5)


def test_resume_after_a_kill_continues_from_the_saved_state(
    full_run: dict, tmp_path: Path, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "killed"
    config = full_run["config"]
    # killed in iteration 2's training, after its first step (3 steps in all)
    stopped = distill(config, out, show_progress=False, stop_after=3)
    assert stopped == {"finished": False, "iteration": 2, "phase": "train"}
    state = json.loads((out / "state.json").read_text())
    assert (state["iteration"], state["phase"]) == (2, "train")
    assert (out / "iter-02" / "checkpoint" / "trainer_state.pt").is_file()
    assert json.loads((out / "iter-02" / "checkpoint" / "distill_config.json").read_text())["distill"] == config.to_dict()
    # a second run without --resume is refused; a resume with other settings too
    assert distill_main(["--output-dir", str(out), "--config", str(_write(tmp_path, config)), "--no-progress", "--threads", "1"]) == 2
    with pytest.raises(TrainingError, match="different from the saved"):
        distill(_config(noveleval, tiny_teacher, tiny_model_dir, lr=5e-4), out, resume=True, show_progress=False)
    # mark what must not be redone: finished phases' files, and the logged first step of iteration 2
    finished = [out / "iter-01" / "mined.jsonl", out / "iter-02" / "annotated.jsonl", out / "iter-01" / "student" / "model.safetensors"]
    stamps = [p.stat().st_mtime_ns for p in finished]
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [(json.loads(x)["iteration"], json.loads(x)["step"]) for x in lines] == [(1, 1), (1, 2), (2, 1)]
    marked = json.loads(lines[2]) | {"marker": "written before the kill"}
    (out / "log.jsonl").write_text("\n".join([*lines[:2], json.dumps(marked)]) + "\n")
    # the CLI resumes with the saved settings and computes exactly what the uninterrupted run did
    assert distill_main(["--output-dir", str(out), "--resume", "--no-progress", "--threads", "1"]) == 0
    resumed = json.loads((out / "report.json").read_text())
    expected = full_run["report"]
    assert [i["student"]["fingerprint"] for i in resumed["iterations"]] == [i["student"]["fingerprint"] for i in expected["iterations"]]
    assert DualEncoder.from_pretrained(out / "model").fingerprint == DualEncoder.from_pretrained(full_run["out"] / "model").fingerprint
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["step"]) for x in log] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert log[2].get("marker") == "written before the kill"  # training went on at step 2, not from the start
    assert [p.stat().st_mtime_ns for p in finished] == stamps
    reference = [json.loads(line) for line in (full_run["out"] / "log.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in log] == pytest.approx([x["loss"] for x in reference], abs=1e-6)
    assert not (out / "iter-02" / "checkpoint").exists()


def _write(tmp_path: Path, config: DistillConfig) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    return path


def test_cli_ablations_and_hidden_positives(tmp_path: Path, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path) -> None:
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, hide_positives=0.3)
    out = tmp_path / "ablation"
    argv = ["--config", str(_write(tmp_path, config)), "--output-dir", str(out), "--no-word-kd", "--static-threshold",
            "--no-progress", "--threads", "1"]
    assert distill_main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["distill"]["word_weight"] == 0 and saved["distill"]["filter_mode"] == "static"
    assert saved["dataset"]["hidden_positives"] > 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all("word_kd" not in x and "sentence_kd" in x for x in log)
    assert not (out / "iter-01" / "attention").exists()  # no attention maps without word-level KD
    it = json.loads((out / "report.json").read_text())["iterations"][0]
    assert it["filter"]["mode"] == "static" and it["filter"]["threshold_min"] == it["filter"]["threshold_max"]
    assert set(it["filter"]["hidden"]) >= {"precision", "recall", "hidden_mined_as_negatives"}
    # the hidden positives were mined as negatives, not as positives
    mined = [json.loads(line) for line in (out / "iter-01" / "mined.jsonl").read_text().splitlines()[1:]]
    from retrieval.datasets import load_dataset

    hidden = hidden_positives(load_dataset(noveleval, "test:fit").qrels, 0.3, config.seed)
    for record in mined:
        assert not {p["docid"] for p in record["positives"]} & hidden.get(record["query_id"], set())
    assert it["mine"]["hidden_mined_as_negatives"] == it["filter"]["hidden"]["hidden_mined_as_negatives"] > 0


def test_cli_user_errors_are_one_line(tmp_path: Path, noveleval: Path, tiny_model_dir: Path, capsys) -> None:
    code = distill_main(["--dataset", str(noveleval), "--split", "test", "--teacher", str(tmp_path), "--student",
                         str(tiny_model_dir), "--output-dir", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "not a cross-encoder directory" in err and "\n" not in err
    assert distill_main(["--output-dir", str(tmp_path / "y"), "--resume", "--dataset", str(noveleval),
                         "--teacher", str(tmp_path)]) == 2


def test_batches_are_deterministic_and_masks_follow_the_filter() -> None:
    queries = [
        FilteredQuery("a", "qa", ("pa",), ("n1", "n2", "n3"), frozenset({"x"})),
        FilteredQuery("b", "qb", ("pb", "x"), ("n1",), frozenset()),
    ]
    config = DistillConfig(dataset="d", teacher="t", queries_per_batch=2, negatives=2, seed=3)
    assert plan_epoch(queries, config, 1, 0) == plan_epoch(queries, config, 1, 0)
    epochs = [plan_epoch(queries, config, 1, e) for e in range(6)]
    assert len({str(e) for e in epochs}) > 1  # a new draw each epoch
    groups = [Group("a", "qa", "pa", ("n1", "n2")), Group("b", "qb", "x", ("n1", "n1"))]
    views = {q.query_id: q for q in queries}
    teacher = {("a", "pa"): 3.0, ("a", "n1"): 1.0, ("a", "n2"): 0.5, ("b", "x"): 2.0, ("b", "n1"): -1.0}
    targets = batch_targets(groups, views, teacher, {("a", "pa"), ("b", "n1")})
    assert targets.columns == ["pa", "n1", "n2", "x", "n1", "n1"]
    # query a: "x" is one of its dropped false negatives, excluded even as an in-batch negative; for b it is a positive
    assert targets.valid_mask[0].tolist() == [True, True, True, False, True, True]
    assert targets.valid_mask[1].all()
    assert targets.positive_mask[0].tolist() == [True, False, False, False, False, False]
    assert targets.positive_mask[1].tolist() == [False, False, False, True, False, False]
    assert targets.kd_index.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert targets.kd_teacher.tolist() == [[3.0, 1.0, 0.5], [2.0, -1.0, -1.0]] and targets.kd_mask.all()
    assert targets.word_pairs == [(0, 0), (1, 4), (1, 5)]


def test_in_batch_sentence_kd_scores_missing_pairs_online() -> None:
    class Teacher:
        def __init__(self) -> None:
            self.pairs: list[tuple[str, str]] = []

        def score(self, queries, passages):
            self.pairs += list(zip(queries, passages))
            return np.array([10.0 + len(p) for p in passages])

    views = {"a": FilteredQuery("a", "qa", ("pa",), ("n1",), frozenset({"n2"})), "b": FilteredQuery("b", "qb", ("pb",), ("n2",))}
    groups = [Group("a", "qa", "pa", ("n1",)), Group("b", "qb", "pb", ("n2",))]
    teacher = {("a", "pa"): 1.0, ("a", "n1"): 0.0, ("b", "pb"): 2.0, ("b", "n2"): 0.5}
    online = Teacher()
    passages = {"pa": "x", "n1": "xx", "pb": "xxx", "n2": "xxxx"}
    targets = batch_targets(groups, views, teacher, set(), online, passages)
    # only the pairs annotation did not score are sent to the teacher (not a's dropped n2: it is masked)
    assert sorted(online.pairs) == [("qa", "xxx"), ("qb", "x"), ("qb", "xx")]
    assert targets.kd_index.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert targets.kd_teacher.tolist() == [[1.0, 0.0, 13.0, 0.0], [11.0, 12.0, 2.0, 0.5]]
    assert targets.kd_mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_fused_teacher_rescores_later_iterations_with_the_base_students_index(
    tmp_path: Path, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, tiny_index: Path
) -> None:
    import shutil

    from retrieval.bm25 import BM25Config
    from retrieval.cross_encoder import TeacherFusion, update_config

    fused = tmp_path / "fused-teacher"
    shutil.copytree(tiny_teacher, fused)
    base = DualEncoder.from_pretrained(tiny_model_dir)
    fusion = TeacherFusion(cross_encoder_weight=0.7, first_stage_weight=0.3, dense_weight=0.5, bm25_weight=0.5,
                           dense_encoder=str(tiny_model_dir), dense_encoder_fingerprint=base.fingerprint,
                           bm25=BM25Config().to_dict())
    update_config(fused, fusion=fusion.model_dump())
    out = tmp_path / "fused-run"
    base_index = tiny_index  # an index root built by md2pr-build-index
    config = _config(noveleval, fused, tiny_model_dir, word_weight=0.0, max_steps=1, max_queries=8, base_index=str(base_index))
    report = distill(config, out, show_progress=False)
    assert report["finished"] and report["iterations"][0]["mine"]["queries"] == 8
    # the base student's existing index was used, not rebuilt
    state = json.loads((out / "state.json").read_text())
    assert Path(state["base_index"]).parent.parent == base_index and not (out / "indexes" / "s0").exists()
    for t in (1, 2):
        header = json.loads((out / f"iter-{t:02d}" / "annotated.jsonl").read_text().splitlines()[0])
        assert header["teacher"]["score"] == "fused"
    # iteration 2 was mined by S_1, yet its teacher scores use the base student's dense scores
    from retrieval.cross_encoder import teacher_scores
    from retrieval.retriever import Retriever
    from training.data import load_training_file

    _, records = load_training_file(out / "iter-02" / "annotated.jsonl")
    retriever = Retriever.open(base_index)
    try:
        from retrieval.cross_encoder import exact_dense_scores

        record = records[0]
        docids = [c.docid for c in record.candidates()]
        dense = exact_dense_scores(retriever, retriever.encoder.encode_queries([record.query])[0], docids)
    finally:
        retriever.close()
    from retrieval.bm25 import BM25Index
    from retrieval.cross_encoder import exact_bm25_scores
    from retrieval.datasets import iter_corpus

    bm25 = exact_bm25_scores(BM25Index.build(iter_corpus(noveleval)), record.query, docids)
    expected = teacher_scores(docids, [c.cross_encoder_score for c in record.candidates()], bm25=bm25, dense=dense, fusion=fusion)
    assert [c.teacher_score for c in record.candidates()] == pytest.approx(expected.tolist(), abs=1e-4)
    # a fusion fitted on another encoder's scores needs its index: refused before anything is written
    update_config(fused, fusion={**fusion.model_dump(), "dense_encoder_fingerprint": "0" * 64})
    code = distill_main(["--config", str(_write(tmp_path, _config(noveleval, fused, tiny_model_dir))),
                         "--output-dir", str(tmp_path / "refused"), "--no-progress", "--threads", "1"])
    assert code == 2 and not (tmp_path / "refused").exists()


# ------------------------------------------------------- sharing iteration 1 (--first-iteration-from)
def _must_not_run(*args, **kwargs):
    raise AssertionError("iteration 1 was computed again instead of being taken from the other run")


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, full_run: dict) -> dict:
    """A run without word-level KD taking iteration 1 from ``full_run``; mining and annotation raise if called."""
    out = tmp_path_factory.mktemp("distill-shared") / "run"
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, max_steps=1, word_weight=0.0,
                     first_iteration_from=str(full_run["out"]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.distill.trainer.annotate_file", _must_not_run)
        patch.setattr("training.distill.trainer.mine", _must_not_run)
        report = distill(config, out, show_progress=False)
    return {"out": out, "config": config, "report": report}


def test_first_iteration_is_taken_from_another_run(shared_run: dict, full_run: dict) -> None:
    import os

    out, source = shared_run["out"], full_run["out"]
    assert shared_run["report"]["finished"]
    for name in ("mined.jsonl", "annotated.jsonl"):
        assert (out / "iter-01" / name).read_bytes() == (source / "iter-01" / name).read_bytes()
        assert os.path.samefile(out / "iter-01" / name, source / "iter-01" / name)  # hard-linked, not copied
    assert os.path.samefile(out / "indexes" / "s0" / "manifest.json", source / "indexes" / "s0" / "manifest.json")
    assert not (out / "iter-01" / "attention").exists()  # no word-level KD here: the maps are not needed
    assert not list((out / "iter-01").glob("*.tmp"))
    # recorded: where iteration 1 came from, with the source's mining summary
    state = json.loads((out / "state.json").read_text())
    source_state = json.loads((source / "state.json").read_text())
    assert state["first_iteration_from"] == str(source.resolve())
    it = state["iterations"]["1"]
    assert it["shared_from"] == str(source.resolve()) and it["annotate"] == {"attention": False, "shared_from": str(source.resolve())}
    assert it["mine"] == source_state["iterations"]["1"]["mine"]
    assert state["base_dev"] == source_state["base_dev"]  # measured here, on the same base index
    # everything after annotation is this run's own: its filter decisions, training and evaluation
    assert not os.path.samefile(out / "iter-01" / "filter.json", source / "iter-01" / "filter.json")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["iteration"], x["step"]) for x in log] == [(1, 1)] and "word_kd" not in log[0]
    assert set(it["dev"]) == {"nDCG@10", "MRR@10", "R@100"} and (out / "model" / "encoder_config.json").is_file()
    assert json.loads((out / "report.json").read_text())["iterations"][0]["shared_from"] == str(source.resolve())


def test_word_kd_run_reads_the_shared_attention_maps(
    tmp_path: Path, full_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import training.distill.train_phase  # noqa: F401  (the modules patched below)
    import training.distill.trainer  # noqa: F401
    import training.distill as distill_module

    monkeypatch.setattr("training.distill.trainer.annotate_file", _must_not_run)
    read: list[Path] = []
    load_attention = distill_module.train_phase.load_attention

    def spy(path):
        read.append(Path(path))
        return load_attention(path)

    monkeypatch.setattr("training.distill.train_phase.load_attention", spy)
    out = tmp_path / "word"
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, max_steps=1, first_iteration_from=str(full_run["out"]))
    assert config.word_weight > 0 and distill(config, out, show_progress=False)["finished"]
    # the annotated header (the source's bytes) names the source's maps; this run reads its own links
    assert read and all(p.parent == out / "iter-01" / "attention" for p in read)
    maps = sorted(p.name for p in (full_run["out"] / "iter-01" / "attention").iterdir())
    assert maps and sorted(p.name for p in (out / "iter-01" / "attention").iterdir()) == maps
    assert os.path.samefile(out / "iter-01" / "attention" / maps[0], full_run["out"] / "iter-01" / "attention" / maps[0])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["word_pairs"] > 0  # the linked maps were found and used


def test_first_iteration_source_with_other_mining_settings_is_refused(
    tmp_path: Path, full_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, capsys
) -> None:
    from dataclasses import replace

    from training.distill import Distiller

    source = str(full_run["out"])
    out = tmp_path / "refused"
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, mining_depth=5, first_iteration_from=source)
    with pytest.raises(TrainingError, match=r"mining_depth \(5 here, 6 there\)"):
        distill(config, out, show_progress=False)
    assert not out.exists()  # refused before anything was written
    # the CLI flag: the same refusal, one error line, exit status 2
    argv = ["--config", str(_write(tmp_path, config)), "--first-iteration-from", source, "--output-dir", str(out),
            "--no-progress", "--threads", "1"]
    assert distill_main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --first-iteration-from") and "mining_depth" in err and "\n" not in err
    # settings that do not change iteration 1's files may differ (and with no hidden positives, the seed)
    free = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, first_iteration_from=source, word_weight=0.0,
                   mine_bm25="always", seed=7, teacher_batch_size=3, attention_negatives=4, filter_mode="none", lr=1e-4)
    assert Distiller(free, out, show_progress=False).first_iteration_source().directory == full_run["out"].resolve()
    assert not out.exists()
    # a run that has not finished annotating its iteration 1, or a directory that is no run, is refused
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_bytes((full_run["out"] / "config.json").read_bytes())
    (unfinished / "state.json").write_text(json.dumps({"iteration": 1, "phase": "annotate", "finished": False, "iterations": {}}))
    for directory, message in ((unfinished, "has not finished annotating its iteration 1"), (tmp_path, "not a distillation run")):
        with pytest.raises(TrainingError, match=message):
            distill(replace(config, mining_depth=6, first_iteration_from=str(directory)), out, show_progress=False)
        assert not out.exists()


def test_word_kd_run_refuses_a_source_without_attention_maps(
    tmp_path: Path, shared_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "needs-maps"
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, max_steps=1, word_weight=0.5,
                     first_iteration_from=str(shared_run["out"]))  # shared_run ran without word-level KD
    with pytest.raises(TrainingError, match="no teacher attention maps"):
        distill(config, out, show_progress=False)
    assert not out.exists()


def test_killed_sharing_run_rechecks_its_source_on_resume(
    tmp_path: Path, full_run: dict, noveleval: Path, tiny_teacher: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill.train_phase  # noqa: F401  (the modules patched below)
    import training.distill.trainer  # noqa: F401
    import training.distill as distill_module

    # a source with iteration 1's files only (no indexes/s0: this run builds its own base index)
    source = tmp_path / "source"
    (source / "iter-01").mkdir(parents=True)
    for name in ("config.json", "state.json", "iter-01/mined.jsonl", "iter-01/annotated.jsonl"):
        (source / name).write_bytes((full_run["out"] / name).read_bytes())
    out = tmp_path / "run"
    config = _config(noveleval, tiny_teacher, tiny_model_dir, iterations=1, max_steps=1, word_weight=0.0,
                     first_iteration_from=str(source))
    monkeypatch.setattr("training.distill.trainer.annotate_file", _must_not_run)
    share_file = distill_module.trainer.share_file

    def killed(src: Path, dst: Path) -> None:
        if dst.name == "annotated.jsonl":
            raise KeyboardInterrupt  # a kill while taking the annotated file
        share_file(src, dst)

    monkeypatch.setattr("training.distill.trainer.share_file", killed)
    with pytest.raises(KeyboardInterrupt):
        distill(config, out, show_progress=False)
    state = json.loads((out / "state.json").read_text())
    assert (state["iteration"], state["phase"]) == (1, "annotate") and not (out / "iter-01" / "annotated.jsonl").exists()
    assert (out / "indexes" / "s0" / "manifest.json").is_file()
    monkeypatch.setattr("training.distill.trainer.share_file", share_file)
    # the source changed meanwhile: the resumed run checks it again and refuses, changing nothing
    saved = (source / "state.json").read_text()
    (source / "state.json").write_text(json.dumps({**json.loads(saved), "iteration": 1, "phase": "mine", "finished": False}))
    with pytest.raises(TrainingError, match="has not finished annotating"):
        distill(config, out, resume=True, show_progress=False)
    assert json.loads((out / "state.json").read_text()) == state
    (source / "state.json").write_text(saved)
    assert distill(config, out, resume=True, show_progress=False)["finished"]
    assert (out / "iter-01" / "annotated.jsonl").read_bytes() == (full_run["out"] / "iter-01" / "annotated.jsonl").read_bytes()


def test_share_file_and_dir_copy_where_hard_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from training.distill import share_dir, share_file

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.jsonl").write_text("first\n")
    (src / "sub" / "000000.npz").write_bytes(b"\x00\x01")
    (src / "sub" / "000001.npz.tmp.npz").write_bytes(b"half")  # a killed writer's leftover
    share_file(src / "a.jsonl", tmp_path / "linked.jsonl")
    share_file(src / "a.jsonl", tmp_path / "linked.jsonl")  # again (a resumed phase): no leftover temp file
    assert os.path.samefile(src / "a.jsonl", tmp_path / "linked.jsonl") and not (tmp_path / "linked.jsonl.tmp").exists()

    def no_links(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    share_file(src / "a.jsonl", tmp_path / "copied.jsonl")
    share_dir(src / "sub", tmp_path / "copied-dir")
    assert (tmp_path / "copied.jsonl").read_text() == "first\n" and not os.path.samefile(src / "a.jsonl", tmp_path / "copied.jsonl")
    assert sorted(p.name for p in (tmp_path / "copied-dir").iterdir()) == ["000000.npz"]
    assert (tmp_path / "copied-dir" / "000000.npz").read_bytes() == b"\x00\x01" and not (tmp_path / "copied-dir.tmp").exists()


def test_unlabelled_queries_train_on_the_teachers_labels(
    tmp_path: Path, noveleval_dl: Path, tiny_teacher: Path, tiny_model_dir: Path
) -> None:
    config = _config(noveleval_dl, tiny_teacher, tiny_model_dir, split="nov", iterations=1, max_steps=3, relevance_level=2)
    out = tmp_path / "unlabelled"
    argv = ["--config", str(_write(tmp_path, config)), "--output-dir", str(out), "--unlabelled-queries", "nov",
            "--max-unlabelled", "5", "--no-progress", "--threads", "1"]
    assert distill_main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["distill"]["unlabelled_queries"] == ["nov"] and saved["distill"]["max_unlabelled"] == 5
    from retrieval.datasets import load_dataset, load_unjudged_queries

    unjudged = list(load_unjudged_queries(noveleval_dl, "nov"))[:5]
    fit = load_dataset(noveleval_dl, "nov:fit")
    assert saved["dataset"]["unlabelled_queries"] == 5
    mined = [json.loads(line) for line in (out / "iter-01" / "mined.jsonl").read_text().splitlines()[1:]]
    # the judged fit queries, then the first five unjudged topics, mined without positives
    assert [r["query_id"] for r in mined] == [*fit.queries, *unjudged]
    assert all(not r["positives"] and r["negatives"] for r in mined[len(fit.queries):])
    # judged queries train on grade 2 only; their grade-1 passages are neither positives nor negatives
    assert json.loads((out / "iter-01" / "mined.jsonl").read_text().splitlines()[0])["relevance_level"] == 2
    for record in mined[: len(fit.queries)]:
        judged = fit.qrels[record["query_id"]]
        assert {p["docid"] for p in record["positives"]} == {d for d, rel in judged.items() if rel >= 2}
        assert all(judged.get(n["docid"], 0) == 0 for n in record["negatives"])
    it = json.loads((out / "report.json").read_text())["iterations"][0]
    assert it["mine"]["unlabelled_queries"] == 5 and it["mine"]["queries"] == len(fit.queries) + 5
    assert it["train"]["queries"] == len(fit.queries) + 5  # each unlabelled query trains on its pseudo-positive
    # the unlabelled queries' thresholds come from their pseudo-positive; dev stays judged-only
    assert set(unjudged) <= set(json.loads((out / "iter-01" / "filter.json").read_text())["thresholds"])
    assert it["filter"]["labelled_positives"] == sum(1 for r in mined for p in r["positives"] if p["relevance"] > 0)
    assert set(it["dev"]) == {"nDCG@10", "MRR@10", "R@100"}
    # a run that shares iteration 1 must agree on the unlabelled queries
    other = tmp_path / "other"
    code = distill_main(["--config", str(_write(tmp_path, config)), "--output-dir", str(other), "--first-iteration-from",
                         str(out), "--no-progress", "--threads", "1"])
    assert code == 2 and not other.exists()


def test_bad_settings_are_named_with_their_values() -> None:
    with pytest.raises(TrainingError, match=r"^invalid distillation settings: epochs=0, lr=0, word_weight=-1\.0$"):
        DistillConfig(dataset="x", teacher="t", lr=0, epochs=0, word_weight=-1.0)
    assert DistillConfig(dataset="x", teacher="t", lr=1e-3).lr == 1e-3


def test_setting_flags_take_their_field_types_and_leave_the_rest_to_the_file(tmp_path: Path) -> None:
    from training.distill_cli import config_from_args, parse_args

    file = tmp_path / "config.json"
    file.write_text(json.dumps({"dataset": "d", "teacher": "t", "lr": 1e-3, "dev_depth": 7}))
    argv = ["--output-dir", str(tmp_path / "out"), "--config", str(file), "--attention-layers", "1", "2",
            "--unlabelled-queries", "dl21", "dl22", "--teacher-fusion", "false", "--max-steps", "3", "--warmup", "0.2"]
    config = config_from_args(parse_args(argv))
    assert config.attention_layers == (1, 2) and config.unlabelled_queries == ("dl21", "dl22")
    assert config.teacher_fusion is False and config.max_steps == 3 and config.warmup == 0.2
    assert config.lr == 1e-3 and config.dev_depth == 7  # not given as flags: the file's values stay
    with pytest.raises(SystemExit):
        parse_args(["--output-dir", str(tmp_path), "--max-steps", "three"])
