"""The one atomic writer (retrieval.jsonio: atomic_path, atomic_open and the JSON/text writers on them) as the jobs use it, and training.checkpoint.truncate_jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import numpy as np

from retrieval.jsonio import atomic_open, atomic_path, write_json_atomic, write_text_atomic
from training.checkpoint import truncate_jsonl


@pytest.mark.parametrize("fsync", [False, True])
def test_write_text_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "state.json"
    target.write_text("old")
    write_text_atomic(target, '{"a": 1}', fsync=fsync)
    assert target.read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert len(synced) == (1 if fsync else 0)


def test_write_json_atomic_keeps_the_old_file_when_serialising_fails(tmp_path: Path) -> None:
    target = tmp_path / "marker.json"
    write_json_atomic(target, {"done": True})
    assert target.read_text() == '{\n  "done": true\n}\n'
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"done": True}


def test_truncate_jsonl_keeps_matching_entries_and_drops_a_cut_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n\n{"step": 3}\n{"step": 4, "lo')  # the last line cut by a kill
    truncate_jsonl(log, lambda entry: entry["step"] <= 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    truncate_jsonl(tmp_path / "absent.jsonl", lambda entry: True)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_atomic_open_writes_binary_payloads_and_removes_the_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "000000.npz"
    with atomic_open(target, "wb") as handle:
        assert Path(handle.name) == tmp_path / "000000.npz.tmp" and not target.exists()  # nothing under the real name yet
        np.savez_compressed(handle, docids=np.array(["a", "b"]))
    with np.load(target) as data:
        assert data["docids"].tolist() == ["a", "b"]
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(target, "wb") as handle:
            handle.write(b"half a file")
            raise RuntimeError("killed")
    with np.load(target) as data:  # the old file is whole, the half-written temporary gone
        assert data["docids"].tolist() == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.npz"]
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(target, "a"):
            pass


def test_atomic_path_hands_a_file_name_to_writers_that_want_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "CURRENT"
    with atomic_path(target, fsync=True, tmp=tmp_path / ".CURRENT.1234.tmp") as tmp:
        assert tmp == tmp_path / ".CURRENT.1234.tmp"
        tmp.write_text("v2\n")
    assert target.read_text() == "v2\n" and len(synced) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT"]
