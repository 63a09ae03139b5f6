"""The Ray Data engine (index_build.engines.RayEngine) against the local engine on a real SciFact slice.

One local Ray cluster (2 CPUs, no dashboard) is started for the module and shut down after it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.index import IndexArtifact
from retrieval.index_versions import resolve_index_dir
from retrieval.paths import data_dir

pytestmark = pytest.mark.usefixtures("one_thread")

SLICE = 300  # passages
SHARD = 64  # passages per shard: 5 shards, the last one short


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 passages of SciFact's real corpus as a BEIR corpus.jsonl."""
    corpus = data_dir() / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"shared data not found at {corpus}")
    out = tmp_path_factory.mktemp("scifact-slice")
    with corpus.open(encoding="utf-8") as source:
        (out / "corpus.jsonl").write_text("".join(itertools.islice(source, SLICE)), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    from index_build.engines import init_ray

    info = init_ray(None, num_cpus=2)
    yield info
    ray.shutdown()


def _vectors(root: Path) -> np.ndarray:
    with IndexArtifact.open(resolve_index_dir(root)) as artifact:
        return artifact.all_vectors()


def _build(corpus: Path, root: Path, model: Path, *extra: str) -> dict:
    from index_build.cli import main

    argv = ["--corpus", str(corpus), "--index-root", str(root), "--encoder", str(model), "--no-progress",
            "--shard-size", str(SHARD), "--batch-size", "16", "--no-bm25", "--gate-queries", "20", *extra]
    assert main(argv) == 0
    return json.loads((resolve_index_dir(root) / "manifest.json").read_text())


def test_ray_engine_gives_the_local_engines_vectors(scifact_slice: Path, tiny_model_dir: Path, ray_cluster, tmp_path: Path) -> None:
    local = _build(scifact_slice, tmp_path / "local", tiny_model_dir, "--threads", "2")
    remote = _build(scifact_slice, tmp_path / "ray", tiny_model_dir, "--threads", "2", "--engine", "ray")
    assert local["build"]["engine"] == "local" and remote["build"]["engine"] == "ray"
    assert remote["build"]["workers"] == 2 and remote["build"]["encoded"] == SLICE
    a, b = _vectors(tmp_path / "local"), _vectors(tmp_path / "ray")
    assert a.shape == (SLICE, 32)
    assert np.array_equal(a, b)  # bit for bit: same shards, same batches, one thread per batch
    assert (tmp_path / "local" / "versions").is_dir()
    docids = lambda root: (resolve_index_dir(root) / "docids.txt").read_text()  # noqa: E731
    assert docids(tmp_path / "local") == docids(tmp_path / "ray")
    assert remote["quality"]["recall_at_k"] == local["quality"]["recall_at_k"] == 1.0


def test_a_local_build_stopped_midway_resumes_on_ray(scifact_slice: Path, encoder, ray_cluster, tmp_path: Path, monkeypatch) -> None:
    from index_build.build import BuildOptions, build_index
    from index_build.engines import LocalEngine, RayEngine
    from index_build.encoding import PassageEncoder
    from retrieval.datasets import iter_corpus

    options = BuildOptions(shard_size=SHARD, batch_size=16, lexical=None, gate_queries=20)
    local = LocalEngine(PassageEncoder(encoder, 16))
    calls = {"n": 0}
    real = local.passage_encoder.encode

    def dies_on_third(texts):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(texts)

    monkeypatch.setattr(local.passage_encoder, "encode", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_index(iter_corpus(scifact_slice), tmp_path / "root", encoder, corpus_label="slice", show_progress=False,
                    options=options, engine=local)
    ray_engine = RayEngine(encoder, 16)
    result = build_index(iter_corpus(scifact_slice), tmp_path / "root", encoder, corpus_label="slice", show_progress=False,
                         options=options, engine=ray_engine)
    assert result.manifest.build["reused"] == 2 * SHARD
    assert result.manifest.build["encoded"] == SLICE - 2 * SHARD
    build_index(iter_corpus(scifact_slice), tmp_path / "fresh", encoder, corpus_label="slice", show_progress=False,
                        options=options)
    assert np.array_equal(_vectors(tmp_path / "root"), _vectors(tmp_path / "fresh"))


def test_reindex_on_ray_encodes_the_upserts(scifact_slice: Path, tiny_model_dir: Path, ray_cluster, tmp_path: Path, capsys) -> None:
    from index_build.reindex_cli import main as reindex_main

    root = tmp_path / "root"
    _build(scifact_slice, root, tiny_model_dir)
    changes = tmp_path / "changes.jsonl"
    changes.write_text(
        json.dumps({"op": "upsert", "docid": "new-1", "title": "Ray", "text": "Passages encoded by actors in a pool."}) + "\n"
        + json.dumps({"op": "delete", "docid": "4983"}) + "\n"
    )
    assert reindex_main(["--index-root", str(root), "--changes", str(changes), "--engine", "ray", "--gate-queries", "20"]) == 0
    manifest = json.loads((resolve_index_dir(root) / "manifest.json").read_text())
    assert manifest["build"]["engine"] == "ray" and manifest["count"] == SLICE
    from index_build.encoding import PassageEncoder
    from retrieval.encoder import DualEncoder

    expected = PassageEncoder(DualEncoder.from_pretrained(tiny_model_dir), 32).encode(["Ray Passages encoded by actors in a pool."])
    got = _vectors(root)[-1]
    np.testing.assert_allclose(got, expected[0], atol=1e-6)


def test_ray_address_without_ray_engine_is_a_usage_error(scifact_slice: Path, tmp_path: Path, capsys) -> None:
    from index_build.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--corpus", str(scifact_slice), "--index-root", str(tmp_path), "--ray-address", "auto"])
    assert exit_info.value.code == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err
