"""CI check: ``benchmarks/RESULTS.md`` is exactly what ``benchmarks/render_results.py`` writes.

RESULTS.md is generated from ``benchmarks/results/*.json`` and never edited by hand; a results
file changed without regenerating it (or a hand edit) fails here with the first differing lines.
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / "benchmarks").is_dir(), reason="no benchmarks/ here (the image's build context leaves it out)")
def test_results_md_is_what_render_results_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("render_results", ROOT / "benchmarks" / "render_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = tmp_path / "RESULTS.md"
    assert module.main(["--output", str(rendered)]) == 0
    capsys.readouterr()  # the script also prints what it wrote
    tracked = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8").splitlines()
    fresh = rendered.read_text(encoding="utf-8").splitlines()
    diff = list(difflib.unified_diff(tracked, fresh, "benchmarks/RESULTS.md", "render_results.py", lineterm="", n=1))
    assert not diff, "benchmarks/RESULTS.md is stale; run .venv/bin/python benchmarks/render_results.py:\n" + "\n".join(diff[:40])
