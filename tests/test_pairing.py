"""Serving a query-tower student over another encoder's passage vectors (``md2pr-index pair``).

The "student" is the tiny random encoder with its weights nudged and saved again (so its
fingerprint differs) plus the ``pairing.json`` that query-tower training writes. Every check
runs on a copy of the shared tiny NovelEval index root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from index_build.index_cli import main as index_main
from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactMismatchError
from retrieval.index import FAISS_FILE, read_manifest
from retrieval.index_versions import current_version, resolve_index_dir
from retrieval.pairing import write_pairing
from retrieval.retriever import Retriever
from service.app import create_app
from service.settings import Settings

KEY = "pairing-key"
QUERY = "Who produced Spider-Man: Across the Spider-Verse?"


def make_student(base_dir: Path, out: Path, pair_with: str | None) -> DualEncoder:
    """The base model with its weights nudged, saved to ``out``; paired with ``pair_with`` (a fingerprint)."""
    student = DualEncoder.from_pretrained(base_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # seeded noise on every weight (a constant shift would vanish in LayerNorm)
        for weight in student.model.parameters():
            weight.add_(0.05 * torch.randn(weight.shape, generator=generator))
    student.save_pretrained(out)
    if pair_with is not None:
        write_pairing(out, str(base_dir), pair_with, "tests", student.fingerprint)
    return student


@pytest.fixture()
def root(tmp_path: Path, tiny_index: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(tiny_index, copy)
    return copy


@pytest.fixture()
def base_fingerprint(root: Path) -> str:
    return read_manifest(resolve_index_dir(root)).encoder.fingerprint


def test_pair_serves_the_student_over_the_same_vectors(root: Path, tmp_path: Path, tiny_model_dir: Path, base_fingerprint: str) -> None:
    before = current_version(root)
    student = make_student(tiny_model_dir, tmp_path / "student", base_fingerprint)
    assert student.fingerprint != base_fingerprint
    assert index_main(["pair", "--index-root", str(root), "--query-encoder", str(tmp_path / "student")]) == 0
    after = current_version(root)
    assert after != before and after.endswith("-paired")
    old_dir, new_dir = resolve_index_dir(root / "versions" / before), resolve_index_dir(root)
    assert os.stat(old_dir / FAISS_FILE).st_ino == os.stat(new_dir / FAISS_FILE).st_ino  # hard link, not a copy
    manifest = read_manifest(new_dir)
    assert manifest.parent == before and manifest.encoder.fingerprint == base_fingerprint
    assert manifest.query_encoder is not None and manifest.query_encoder.fingerprint == student.fingerprint

    retriever = Retriever.open(root)
    try:
        assert retriever.encoder.fingerprint == student.fingerprint  # queries go through the student
        vector = retriever.encoder.encode_queries([QUERY])
        np.testing.assert_allclose(vector, student.encode_queries([QUERY]), atol=1e-6)
        base_vector = DualEncoder.from_pretrained(tiny_model_dir).encode_queries([QUERY])
        assert not np.allclose(vector, base_vector)
        assert len(retriever.search([QUERY], 5)[0]) == 5
    finally:
        retriever.close()

    # rollback goes back to the base query encoder
    assert index_main(["rollback", "--index-root", str(root)]) == 0
    retriever = Retriever.open(root)
    try:
        assert retriever.encoder.fingerprint == base_fingerprint
    finally:
        retriever.close()


def test_pair_refuses_a_student_not_paired_with_these_vectors(root: Path, tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    before = current_version(root)
    make_student(tiny_model_dir, tmp_path / "unpaired", None)  # a two-tower model: pairs with itself only
    assert index_main(["pair", "--index-root", str(root), "--query-encoder", str(tmp_path / "unpaired")]) == 2
    assert "pairs with passages of" in capsys.readouterr().err
    make_student(tiny_model_dir, tmp_path / "other", "f" * 64)  # paired with some other passage encoder
    assert index_main(["pair", "--index-root", str(root), "--query-encoder", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ffffffffffff" in err and "Traceback" not in err
    assert current_version(root) == before  # nothing was published


def test_a_paired_version_refuses_any_other_query_encoder(root: Path, tmp_path: Path, tiny_model_dir: Path, base_fingerprint: str) -> None:
    make_student(tiny_model_dir, tmp_path / "student", base_fingerprint)
    assert index_main(["pair", "--index-root", str(root), "--query-encoder", str(tmp_path / "student")]) == 0
    with pytest.raises(ArtifactMismatchError, match="answers queries with encoder"):
        Retriever.open(root, encoder_path=tiny_model_dir)  # the base model is not the named query encoder


def test_a_running_service_hot_swaps_to_the_student(
    root: Path, tmp_path: Path, tiny_model_dir: Path, base_fingerprint: str, wait_until_ready
) -> None:
    settings = Settings(index=root, torch_threads=1, admin_api_key=KEY, access_log=False)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client.get)
        first = client.post("/search", json={"query": QUERY, "top_k": 3}).json()
        assert first["model"] == base_fingerprint[:12]
        student = make_student(tiny_model_dir, tmp_path / "student", base_fingerprint)
        assert index_main(["pair", "--index-root", str(root), "--query-encoder", str(tmp_path / "student")]) == 0
        reload = client.post("/admin/reload", headers={"x-api-key": KEY})
        assert reload.status_code == 200 and reload.json()["status"] == "swapped", reload.text
        after = client.post("/search", json={"query": QUERY, "top_k": 3}).json()
        assert after["model"] == student.fingerprint[:12] and after["index_version"] == current_version(root)
        assert len(after["hits"]) == 3
        assert reload.json()["encoder_reused"] is False  # the student was read from disk
        # a rollback to the base version reuses the encoder swapped out (kept loaded), and so does
        # going forward to the student again: nothing is read from disk while serving
        runtime = client.app.state.runtime
        base_encoder = runtime.manager._standby
        assert base_encoder is not None and base_encoder.fingerprint == base_fingerprint
        student_version = current_version(root)
        for target, fingerprint in ((first["index_version"], base_fingerprint), (student_version, student.fingerprint)):
            (root / "CURRENT").write_text(target + "\n")
            swap = client.post("/admin/reload", headers={"x-api-key": KEY}).json()
            assert swap["status"] == "swapped" and swap["index_version"] == target and swap["encoder_reused"] is True
            answer = client.post("/search", json={"query": QUERY, "top_k": 3}).json()
            assert answer["model"] == fingerprint[:12] and answer["index_version"] == target
        assert runtime.holder.current.retriever.encoder is not base_encoder
        assert runtime.manager._standby is base_encoder  # the same object went back to standby
