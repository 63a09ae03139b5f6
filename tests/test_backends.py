"""Encoder backends: ONNX export of a tiny random BERT, parity with torch, and every refusal
(no export, stale export, changed file, missing or failed parity record)."""

from __future__ import annotations

import json
from collections.abc import Callable
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.backends import EXPORT_FILE, ONNX_FILES, PARITY_FILE, BackendError, export_dir
from retrieval.datasets import iter_corpus, read_tsv_queries
from retrieval.encoder import DualEncoder
from retrieval.onnx_export import FP32_MAX_ABS, export_onnx
from retrieval.paths import builtin_model_dir
from retrieval.retriever import Retriever

pytestmark = pytest.mark.usefixtures("one_thread")

#: The ``copy_model`` fixture (tests/conftest.py): a model directory copied without its ONNX export.
CopyModel = Callable[[Path, Path], Path]


@pytest.fixture(scope="module")
def exported(exported_model: Path) -> Path:
    """The tiny model, exported and parity-checked on NovelEval by ``md2pr-export`` (conftest's
    ``exported_model``; read only)."""
    return exported_model


@pytest.fixture(scope="module")
def texts(noveleval: Path) -> tuple[list[str], list[str]]:
    queries = list(read_tsv_queries(noveleval / "queries.tsv").values())
    passages = [p.full_text for p in iter_corpus(noveleval)][:60]
    return queries, passages


def test_export_lives_beside_the_model_and_records_its_weights(exported: Path) -> None:
    directory = exported / "onnx"
    manifest = json.loads((directory / EXPORT_FILE).read_text())
    assert manifest["source_fingerprint"] == DualEncoder.from_pretrained(exported).fingerprint
    assert set(manifest["files"]) == set(ONNX_FILES)
    for entry in manifest["files"].values():
        assert (directory / entry["file"]).stat().st_size == entry["bytes"] > 0


def test_builtin_model_exports_into_artifacts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MD2PR_ARTIFACTS", str(tmp_path))
    fingerprint = "ab" * 32
    assert export_dir(builtin_model_dir(), fingerprint) == tmp_path / "exports" / fingerprint[:16]
    assert export_dir(tmp_path / "model", fingerprint) == tmp_path / "model" / "onnx"


def test_onnx_fp32_matches_torch_on_real_text(exported: Path, texts: tuple[list[str], list[str]]) -> None:
    queries, passages = texts
    reference = DualEncoder.from_pretrained(exported)
    onnx = DualEncoder.from_pretrained(exported, backend="onnx", threads=1)
    assert onnx.backend.name == "onnx" and reference.backend.name == "torch"
    for kind, batch in (("query", queries), ("passage", passages)):
        ours, theirs = onnx.encode(batch, kind, batch_size=7), reference.encode(batch, kind, batch_size=7)
        assert ours.shape == theirs.shape == (len(batch), reference.dimension)
        assert float(np.abs(ours - theirs).max()) <= FP32_MAX_ABS
        assert not np.allclose(ours[0], ours[1])  # rows stay in input order, not all one vector


def test_parity_record_is_measured_and_consistent(exported: Path, noveleval: Path) -> None:
    record = json.loads((exported / "onnx" / PARITY_FILE).read_text())
    assert set(record["backends"]) == set(ONNX_FILES)
    fp32 = record["backends"]["onnx"]
    assert fp32["passed"], fp32["reason"]
    assert fp32["queries"] == 21 and fp32["passages"] == 420  # NovelEval's judged queries, whole corpus
    assert max(fp32["max_abs_diff"].values()) <= FP32_MAX_ABS
    assert min(fp32["min_cosine"].values()) > 0.9999
    assert abs(fp32["ndcg_at_10"]["both_sides"] - fp32["ndcg_at_10"]["torch"]) <= 0.005
    int8 = record["backends"]["onnx-int8"]
    drop = max(int8["ndcg_at_10"]["torch"] - int8["ndcg_at_10"][k] for k in ("both_sides", "query_only"))
    assert int8["passed"] == (drop <= int8["limits"]["max_ndcg_drop"])  # the verdict follows the rule
    assert int8["limits"]["max_abs"] is None  # int8 is judged on ranking quality only


def test_int8_vectors_are_close_but_not_identical(exported: Path, texts: tuple[list[str], list[str]]) -> None:
    queries, _ = texts
    reference = DualEncoder.from_pretrained(exported)
    int8 = reference.with_backend("onnx-int8", threads=1, require_parity=False)
    ours, theirs = int8.encode_queries(queries), reference.encode_queries(queries)
    cosine = (ours * theirs).sum(axis=1)  # both unit length
    assert cosine.min() > 0.9
    assert np.abs(ours - theirs).max() > 1e-6  # really quantized, not the fp32 graph


def test_export_is_cached_until_forced(exported: Path) -> None:
    encoder = DualEncoder.from_pretrained(exported)
    stamp = (exported / "onnx" / EXPORT_FILE).stat().st_mtime_ns
    directory, manifest = export_onnx(encoder)
    assert directory == exported / "onnx"
    assert (directory / EXPORT_FILE).stat().st_mtime_ns == stamp


def test_exported_graph_has_onnx_runtime_fused_attention(exported: Path) -> None:
    """The export's recipe (TorchScript trace + ORT's BERT optimiser): attention and the embedding
    layer norm fused into single ONNX Runtime kernels, the layer's MatMuls quantized in int8."""
    import onnx

    ops = {name: {n.op_type for n in onnx.load(str(exported / "onnx" / file)).graph.node} for name, file in ONNX_FILES.items()}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= ops["onnx"]
    assert {"QAttention", "QEmbedLayerNormalization", "SkipLayerNormalization", "MatMulInteger"} <= ops["onnx-int8"]
    for name in ONNX_FILES:
        assert "Softmax" not in ops[name], name  # no unfused attention left over
    assert "MatMulInteger" not in ops["onnx"]


def test_an_export_made_another_way_is_redone(exported: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    from retrieval.backends import ExportManifest, read_record, write_record

    model = copy_model(exported, tmp_path / "model")
    encoder = DualEncoder.from_pretrained(model)
    directory, manifest = export_onnx(encoder)
    write_record(directory / EXPORT_FILE, manifest.model_copy(update={"exporter": "an older recipe"}))
    (directory / PARITY_FILE).write_text("{}")
    again, redone = export_onnx(encoder)
    assert again == directory and redone.exporter == manifest.exporter != "an older recipe"
    assert read_record(directory / EXPORT_FILE, ExportManifest).exporter == manifest.exporter
    assert not (directory / PARITY_FILE).exists()  # the old verdict went with the old graph


def test_backend_without_parity_record_is_refused(tiny_model_dir: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "model")
    export_onnx(DualEncoder.from_pretrained(model))  # exported, never checked
    with pytest.raises(BackendError, match="no parity record"):
        DualEncoder.from_pretrained(model, backend="onnx")


def test_failed_parity_is_refused_with_its_reason(exported: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(exported, tmp_path / "model")
    shutil.copytree(exported / "onnx", model / "onnx")
    path = model / "onnx" / PARITY_FILE
    record = json.loads(path.read_text())
    record["backends"]["onnx"].update(passed=False, reason="failed: nDCG@10 both_sides 0.1 is 0.5 below torch's 0.6")
    path.write_text(json.dumps(record))
    with pytest.raises(BackendError, match="failed its parity check.*0.5 below"):
        DualEncoder.from_pretrained(model, backend="onnx")


def test_stale_export_is_refused(exported: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(exported, tmp_path / "model")
    shutil.copytree(exported / "onnx", model / "onnx")
    encoder = DualEncoder.from_pretrained(model)
    with torch.no_grad():
        next(encoder.model.parameters()).add_(0.01)  # "trained" since the export
    encoder.save_pretrained(model)
    with pytest.raises(BackendError, match="stale"):
        DualEncoder.from_pretrained(model, backend="onnx")


def test_changed_onnx_file_is_refused(exported: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(exported, tmp_path / "model")
    shutil.copytree(exported / "onnx", model / "onnx")
    with (model / "onnx" / ONNX_FILES["onnx"]).open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(BackendError, match="changed since it was exported"):
        DualEncoder.from_pretrained(model, backend="onnx")


def test_unknown_backend_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(BackendError, match="unknown encoder backend 'tensorrt'"):
        DualEncoder.from_pretrained(tiny_model_dir, backend="tensorrt")


def test_retriever_serves_queries_on_the_chosen_backend(exported: Path, noveleval: Path, tmp_path: Path) -> None:
    from index_build.cli import main as build_main

    root = tmp_path / "index"
    assert build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(exported),
                       "--no-progress", "--no-bm25", "--threads", "1"]) == 0
    query = "which film won the award"
    torch_hits = Retriever.open(root).search([query], top_k=5)[0]
    retriever = Retriever.open(root, backend="onnx")
    try:
        assert retriever.encoder.backend.name == "onnx"
        assert [h.docid for h in retriever.search([query], top_k=5)[0]] == [h.docid for h in torch_hits]
    finally:
        retriever.close()


def test_backend_without_export_is_refused(tiny_model_dir: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "model")
    with pytest.raises(BackendError, match="no ONNX export of this encoder.*md2pr-export"):
        DualEncoder.from_pretrained(model, backend="onnx-int8")


def test_build_with_onnx_backend_records_it_and_matches_torch(exported: Path, noveleval: Path, tmp_path: Path) -> None:
    from index_build.cli import main as build_main
    from retrieval.index import IndexArtifact
    from retrieval.index_versions import resolve_index_dir

    vectors = {}
    for backend in ("torch", "onnx"):
        root = tmp_path / backend
        argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(exported), "--no-progress",
                "--no-bm25", "--threads", "2", "--backend", backend]  # 2 threads: one-thread ORT sessions per worker
        assert build_main(argv) == 0
        index = IndexArtifact.open(resolve_index_dir(root))
        try:
            assert index.manifest.encoder.backend == backend
            vectors[backend] = index.take_vectors(np.arange(index.manifest.count))  # [420, 32]
        finally:
            index.close()
    assert vectors["onnx"].shape == (420, 32)
    assert float(np.abs(vectors["onnx"] - vectors["torch"]).max()) <= FP32_MAX_ABS


def test_build_with_an_unchecked_backend_is_one_error_line(
    tiny_model_dir: Path, noveleval: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], copy_model: CopyModel
) -> None:
    from index_build.cli import main as build_main

    model = copy_model(tiny_model_dir, tmp_path / "model")
    export_onnx(DualEncoder.from_pretrained(model))
    argv = ["--corpus", str(noveleval), "--index-root", str(tmp_path / "idx"), "--encoder", str(model),
            "--no-progress", "--backend", "onnx-int8"]
    assert build_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: backend 'onnx-int8' has no parity record")
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_reindex_keeps_the_backend_that_built_the_version(exported: Path, noveleval: Path, tmp_path: Path) -> None:
    from index_build.changes import read_changes
    from index_build.cli import main as build_main
    from index_build.reindex import ReindexOptions, apply_changes
    from retrieval.errors import ArtifactMismatchError

    root = tmp_path / "idx"
    assert build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(exported),
                       "--no-progress", "--no-bm25", "--backend", "onnx"]) == 0
    changes = tmp_path / "changes.jsonl"
    changes.write_text(json.dumps({"op": "upsert", "docid": "new-1", "title": "", "text": "a film about a spider"}) + "\n")
    with pytest.raises(ArtifactMismatchError, match="encoded on backend 'onnx'"):
        apply_changes(root, read_changes(changes), encoder=DualEncoder.from_pretrained(exported))
    result = apply_changes(root, read_changes(changes), options=ReindexOptions(min_recall=0.0))
    assert result.manifest.encoder.backend == "onnx" and result.manifest.count == 421


def _service_index(model: Path, noveleval: Path, root: Path) -> Path:
    from index_build.cli import main as build_main

    assert build_main(["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(model),
                       "--no-progress", "--no-bm25", "--threads", "1"]) == 0
    return root


def test_service_serves_a_checked_backend_and_refuses_an_unchecked_one(
    exported: Path, tiny_model_dir: Path, noveleval: Path, tmp_path: Path, copy_model: CopyModel
) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    checked = _service_index(exported, noveleval, tmp_path / "checked")
    with TestClient(create_app(Settings(index=checked, torch_threads=1, access_log=False, backend="onnx"))) as client:
        runtime = client.app.state.runtime
        _wait(lambda: not runtime.holder.loading)
        assert client.get("/readyz").status_code == 200
        assert runtime.holder.current.backend == "onnx"
        assert client.get("/info").json()["model"]["backend"] == "onnx"  # what an operator reads
        reply = client.post("/search", json={"query": "which film won the award", "top_k": 3})
        assert reply.status_code == 200 and len(reply.json()["hits"]) == 3

    unchecked_model = copy_model(tiny_model_dir, tmp_path / "unchecked-model")
    export_onnx(DualEncoder.from_pretrained(unchecked_model))  # exported, never parity-checked
    unchecked = _service_index(unchecked_model, noveleval, tmp_path / "unchecked")
    with TestClient(create_app(Settings(index=unchecked, torch_threads=1, access_log=False, backend="onnx"))) as client:
        runtime = client.app.state.runtime
        _wait(lambda: not runtime.holder.loading)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "backend 'onnx' has no parity record" in ready.json()["error"]
        assert client.post("/search", json={"query": "film"}).status_code == 503


def _wait(condition, limit_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the service to load"
        time.sleep(0.01)
