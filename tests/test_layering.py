"""The layering of DESIGN.md as a contract: import-linter's ``[tool.importlinter]`` in pyproject.toml.

retrieval imports none of the apps; training, index_build, service and evaluation import only
retrieval (never each other); pipeline sits on top. The second test shows the same contract
catches a violation, so the first cannot pass by checking nothing.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import importlinter.cli  # noqa: F401  (configures import-linter's adapters on import)
from importlinter.application.use_cases import lint_imports as _lint_imports

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(config_filename: str) -> int:
    """import-linter's check, 0 when every contract is kept (its CLI's lint_imports would also
    reconfigure logging with dictConfig, disabling every logger other tests capture)."""
    return 0 if _lint_imports(config_filename=config_filename, cache_dir=None, no_logo=True) else 1


def test_the_project_keeps_its_layers(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(str(ROOT / "pyproject.toml"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 kept, 0 broken" in out


def test_the_contract_catches_an_import_back_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # The project's own contract, over empty stand-in packages where the library imports an app.
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    prefix = "layercheck_"
    renamed = lambda layer: " | ".join(prefix + name.strip() for name in layer.split("|"))  # noqa: E731
    roots = [prefix + name for name in linter["root_packages"]]
    for root in roots:
        (tmp_path / root).mkdir()
        (tmp_path / root / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / f"{prefix}training" / "core.py").write_text(f"import {prefix}retrieval\n", encoding="utf-8")
    (tmp_path / f"{prefix}retrieval" / "core.py").write_text(f"import {prefix}service\n", encoding="utf-8")
    lines = ["[tool.importlinter]", f"root_packages = {json.dumps(roots)}"]
    for contract in linter["contracts"]:
        layers = [renamed(layer) for layer in contract["layers"]]
        lines += ["[[tool.importlinter.contracts]]", f"name = {json.dumps(contract['name'])}",
                  f"type = {json.dumps(contract['type'])}", f"layers = {json.dumps(layers)}"]
    (tmp_path / "contracts.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    try:
        code = lint_imports(str(tmp_path / "contracts.toml"))
    finally:
        for root in roots:
            for module in [m for m in sys.modules if m == root or m.startswith(root + ".")]:
                del sys.modules[module]
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"{prefix}retrieval.core -> {prefix}service" in out
    assert "0 kept, 1 broken" in out
