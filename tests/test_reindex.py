"""Incremental re-indexing: upserts and deletes per family, through the Retriever, the CLI and /search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index_build.build import BuildOptions, build_index
from index_build.changes import read_changes
from index_build.reindex import SIDE_INDEX_UPDATERS, ReindexOptions, SideIndexUpdate, apply_changes
from index_build.reindex_cli import main as reindex_main
from retrieval.datasets import iter_corpus
from retrieval.errors import ArtifactMismatchError, DatasetFormatError
from retrieval.index import IndexArtifact, read_manifest, write_manifest
from retrieval.index_versions import current_version, resolve_index_dir
from retrieval.retriever import Retriever

NEW_TEXT = "zebra migration across the savanna"  # short: the query vector equals the passage vector
REPLACED_TEXT = "a replaced passage about volcano eruptions"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def docids(noveleval: Path) -> list[str]:
    return [p.docid for p in iter_corpus(noveleval)]


def write_changes(path: Path, docids: list[str]) -> Path:
    lines = [
        {"op": "upsert", "docid": "new-zebra", "title": "", "text": NEW_TEXT},
        {"op": "delete", "docid": docids[0]},
        {"op": "upsert", "docid": docids[1], "title": "", "text": REPLACED_TEXT},
        {"op": "delete", "docid": docids[2]},
        {"op": "upsert", "docid": docids[3], "title": "", "text": "replaced, then deleted"},
        {"op": "delete", "docid": docids[3]},
        {"op": "delete", "docid": "never-indexed"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    return path


def build(root: Path, noveleval: Path, encoder, factory: str) -> str:
    options = BuildOptions(factory=factory, min_recall=0.0)
    return build_index(iter_corpus(noveleval), root, encoder, corpus_label=str(noveleval), show_progress=False, options=options).version


@pytest.mark.parametrize(
    "factory, method",
    [("Flat", "remove_ids"), ("IVF8,Flat", "remove_ids"), ("IVF8,PQ8", "remove_ids"), ("HNSW32", "rebuild"), ("HNSW32,SQ8", "rebuild")],
)
def test_upserts_and_deletes_per_family(tmp_path: Path, noveleval: Path, encoder, docids: list[str], factory: str, method: str) -> None:
    root = tmp_path / "root"
    parent = build(root, noveleval, encoder, factory)
    old_dir = root / "versions" / parent
    old_manifest = (old_dir / "manifest.json").read_bytes()
    old = IndexArtifact.open(old_dir)
    old_vectors = {d: old.take_vectors(np.array([r]))[0] for r, d in enumerate(old.docids)} if old.has_vectors() else None
    old.close()

    changes = read_changes(write_changes(tmp_path / "changes.jsonl", docids))
    result = apply_changes(root, changes, encoder=encoder, options=ReindexOptions(min_recall=0.0))
    build_info = result.manifest.build
    assert (build_info["upserts"], build_info["replaced"], build_info["deleted"], build_info["missing_deletes"]) == (2, 1, 3, 1)
    assert build_info["index_update"] == method and result.manifest.parent == parent and current_version(root) == result.version
    assert result.manifest.count == 420 - 3 + 1 and result.manifest.search_params == read_manifest(old_dir).search_params

    retriever = Retriever.open(root, encoder_path=None)
    try:
        index = retriever.index
        gone = {docids[0], docids[2], docids[3]}
        assert not gone & set(index.docids) and len(index.docids) == index.manifest.count == index.store.count
        for row in (0, 100, len(index.docids) - 1):  # docids, store and index agree row by row
            assert index.store.get_rows([row])[row].docid == index.docids[row]
        assert index.docids[-2:] == ["new-zebra", docids[1]]  # kept rows keep their order, upserts go last in file order

        hits = retriever.search([NEW_TEXT], top_k=3, return_text=True)[0]
        assert hits[0].docid == "new-zebra" and hits[0].text == NEW_TEXT
        hits = retriever.search([REPLACED_TEXT], top_k=3, return_text=True)[0]
        assert hits[0].docid == docids[1] and hits[0].text == REPLACED_TEXT
        everything = retriever.search([p.full_text for p in list(iter_corpus(noveleval))[:40]], top_k=50)
        assert not gone & {h.docid for hits in everything for h in hits}  # deleted docids are never returned

        if old_vectors is not None:  # kept rows were renumbered consistently (IVF id remap, rebuilds)
            for docid in (docids[10], docids[200], docids[419]):
                row = index.docids.index(docid)
                np.testing.assert_array_equal(index.take_vectors(np.array([row]))[0], old_vectors[docid])
                if index.family.family != "ivf" or factory == "IVF8,Flat":
                    _, rows = index.search(old_vectors[docid][None, :], 1, {"nprobe": 8} if index.family.family == "ivf" else None)
                    assert index.docids[rows[0, 0]] == docid
    finally:
        retriever.close()
    assert (old_dir / "manifest.json").read_bytes() == old_manifest  # the served version was never modified
    IndexArtifact.open(old_dir).close()  # and it still opens


def test_change_through_the_cli_then_search_over_http(
    tmp_path: Path, noveleval: Path, encoder, tiny_model_dir: Path, docids: list[str], capsys, wait_until_ready
) -> None:
    """The must-show: apply an upsert + delete change file with md2pr-reindex, then /search the new version."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    root = tmp_path / "root"
    build(root, noveleval, encoder, "Flat")
    changes = write_changes(tmp_path / "changes.jsonl", docids)
    assert reindex_main(["--index-root", str(root), "--changes", str(changes), "--threads", "1", "--keep", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("published ") and "+2 upserted (1 replaced), -3 deleted, 1 unknown deletes ignored" in out
    with TestClient(create_app(Settings(index=root, torch_threads=1))) as client:
        wait_until_ready(client.get)  # the service loads the index in the background
        body = client.post("/search", json={"query": NEW_TEXT, "top_k": 5}).json()
        assert body["index_version"] == current_version(root)
        assert body["hits"][0]["docid"] == "new-zebra" and body["hits"][0]["text"] == NEW_TEXT
        for query in ("Spider-Man", REPLACED_TEXT, "film", docids[0]):
            found = {h["docid"] for h in client.post("/search", json={"query": query, "top_k": 100}).json()["hits"]}
            assert not found & {docids[0], docids[2], docids[3]}


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"op": "upsert", "docid": "a", "text": "ok"}\n{"op": "upsert", "docid": "b", "text": "x"\n', "changes.jsonl:2: invalid JSON"),
        ('{"op": "insert", "docid": "a", "text": "x"}\n', "changes.jsonl:1: 'op' must be"),
        ('{"op": "upsert", "text": "x"}\n', "changes.jsonl:1: missing field 'docid'"),
        ('{"op": "upsert", "docid": "a"}\n', "changes.jsonl:1: missing field 'text'"),
        ('{"op": "upsert", "docid": "a", "text": "  ", "title": ""}\n', "changes.jsonl:1: upsert of 'a' has no text"),
        ('{"op": "upsert", "docid": "a", "txt": "x"}\n', "changes.jsonl:1: unknown field 'txt'"),
        ('{"op": "delete", "docid": "a\\tb"}\n', "changes.jsonl:1: docid 'a\\tb' is empty or contains a tab"),
        ('\n\n', "change file holds no operations"),
        ('["upsert"]\n', "changes.jsonl:1: expected a JSON object"),
    ],
)
def test_malformed_change_file_is_one_line_and_changes_nothing(
    tmp_path: Path, noveleval: Path, encoder, capsys, content: str, fragment: str
) -> None:
    root = tmp_path / "root"
    build(root, noveleval, encoder, "Flat")
    before = sorted(p.name for p in (root / "versions").iterdir()), current_version(root)
    changes = tmp_path / "changes.jsonl"
    changes.write_text(content)
    assert reindex_main(["--index-root", str(root), "--changes", str(changes), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert (sorted(p.name for p in (root / "versions").iterdir()), current_version(root)) == before


def test_another_encoder_is_refused(tmp_path: Path, noveleval: Path, encoder, tiny_model_dir: Path, docids: list[str], capsys) -> None:
    root = tmp_path / "root"
    build(root, noveleval, encoder, "Flat")
    before = current_version(root)
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other"))
    config = json.loads((other / "encoder_config.json").read_text())
    config["max_passage_length"], config["fingerprint"] = 48, ""
    (other / "encoder_config.json").write_text(json.dumps(config))
    changes = write_changes(tmp_path / "changes.jsonl", docids)
    code = reindex_main(["--index-root", str(root), "--changes", str(changes), "--encoder-path", str(other), "--threads", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to mix encoders" in err and "md2pr-build-index --encoder" in err and "\n" not in err
    assert current_version(root) == before and len(list((root / "versions").iterdir())) == 1
    assert not [p for p in (root / "staging").iterdir() if p.is_dir()]
    with pytest.raises(ArtifactMismatchError):
        from retrieval.encoder import DualEncoder

        apply_changes(root, read_changes(changes), encoder=DualEncoder.from_pretrained(other))


def test_nothing_published_yet(tmp_path: Path, docids: list[str], capsys) -> None:
    changes = write_changes(tmp_path / "changes.jsonl", docids)
    (tmp_path / "root").mkdir()
    assert reindex_main(["--index-root", str(tmp_path / "root"), "--changes", str(changes)]) == 2
    assert "nothing is published" in capsys.readouterr().err


def test_change_semantics_last_operation_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        '{"op": "upsert", "docid": "a", "text": "one"}\n'
        '{"op": "upsert", "docid": "b", "title": null, "text": "two"}\n'
        '{"op": "delete", "docid": "a"}\n'
        '{"op": "upsert", "docid": 7, "title": "T", "text": "three"}\n'
        '{"op": "delete", "docid": "c"}\n'
        '{"op": "upsert", "docid": "c", "text": "four"}\n'
        '{"op": "upsert", "docid": "b", "text": "two again"}\n'
    )
    changes = read_changes(path)
    assert list(changes.upserts) == ["7", "c", "b"] and changes.upserts["b"].text == "two again"
    assert changes.deletes == {"a"} and changes.lines == 7 and changes.touched == {"a", "b", "c", "7"}
    with pytest.raises(DatasetFormatError, match="not found"):
        read_changes(tmp_path / "missing.jsonl")


def test_side_indexes_are_updated_or_dropped(tmp_path: Path, noveleval: Path, encoder, docids: list[str], monkeypatch) -> None:
    root = tmp_path / "root"
    version = build(root, noveleval, encoder, "Flat")
    # a side index published inside the version directory, listed by the manifest
    directory = root / "versions" / version
    (directory / "side").mkdir()
    (directory / "side" / "rows.txt").write_text("\n".join(IndexArtifact.open(directory).docids))
    (directory / "extra.bin").write_bytes(b"\0" * 8)
    write_manifest(directory, read_manifest(directory))

    def update_side(update: SideIndexUpdate) -> None:
        (update.staging / "side").mkdir()
        kept = [update.old.docids[r] for r in update.kept_rows.tolist()]
        (update.staging / "side" / "rows.txt").write_text("\n".join(kept + [p.docid for p in update.added]))

    monkeypatch.setitem(SIDE_INDEX_UPDATERS, "side", update_side)
    result = apply_changes(root, read_changes(write_changes(tmp_path / "c.jsonl", docids)), encoder=encoder)
    assert "side/rows.txt" in result.manifest.files and "extra.bin" not in result.manifest.files
    assert result.manifest.build["dropped_files"] == ["extra.bin"]
    new = IndexArtifact.open(resolve_index_dir(root))
    assert (new.directory / "side" / "rows.txt").read_text().split("\n") == new.docids
