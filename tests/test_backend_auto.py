"""``auto``: the fastest backend whose export passed its parity check for these weights, else torch."""

from __future__ import annotations

import json
from collections.abc import Callable
import shutil
from pathlib import Path

import pytest

from retrieval.backends import AUTO_ORDER, PARITY_FILE
from retrieval.encoder import DualEncoder
from retrieval.onnx_export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")

#: The ``copy_model`` fixture (tests/conftest.py): a model directory copied without its ONNX export.
CopyModel = Callable[[Path, Path], Path]


@pytest.fixture(scope="module")
def checked(exported_model: Path) -> Path:
    """The tiny model, exported and parity-checked on NovelEval (conftest's ``exported_model``; read only)."""
    return exported_model


def _fail(model: Path, backend: str) -> None:
    path = model / "onnx" / PARITY_FILE
    record = json.loads(path.read_text())
    record["backends"][backend].update(passed=False, reason="failed: made to fail by the test")
    path.write_text(json.dumps(record))


def test_auto_without_an_export_is_torch(tiny_model_dir: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    assert DualEncoder.from_pretrained(copy_model(tiny_model_dir, tmp_path / "m"), backend="auto").backend.name == "torch"


def test_auto_without_a_parity_record_is_torch(tiny_model_dir: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    model = copy_model(tiny_model_dir, tmp_path / "m")
    export_onnx(DualEncoder.from_pretrained(model))  # exported, never checked: not offered
    assert DualEncoder.from_pretrained(model, backend="auto").backend.name == "torch"


def test_auto_takes_the_first_passing_backend_in_speed_order(checked: Path, tmp_path: Path, copy_model: CopyModel) -> None:
    record = json.loads((checked / "onnx" / PARITY_FILE).read_text())["backends"]
    passing = [name for name in AUTO_ORDER if name == "torch" or record[name]["passed"]]
    assert DualEncoder.from_pretrained(checked, backend="auto").backend.name == passing[0]
    # with the onnx backends failed one by one, auto falls through to the next and finally torch
    model = copy_model(checked, tmp_path / "m")
    shutil.copytree(checked / "onnx", model / "onnx")
    for name in [n for n in AUTO_ORDER if n != "torch"]:
        _fail(model, name)
        chosen = DualEncoder.from_pretrained(model, backend="auto").backend.name
        assert chosen != name and AUTO_ORDER.index(chosen) > AUTO_ORDER.index(name)
    assert DualEncoder.from_pretrained(model, backend="auto").backend.name == "torch"
