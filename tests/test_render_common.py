"""benchmarks/render_common.py: two runs of one benchmark are told apart by their date and commit."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from render_common import machine_text  # noqa: E402


def test_machine_text_names_the_run_when_known() -> None:
    machine = {"cpus": 2, "cpu_model": "AMD EPYC", "threads": 2, "load_average_at_start": [0.5, 1.0, 1.5]}
    assert machine_text({"machine": machine}).endswith("load average at start 0.5, 1.0, 1.5")
    dated = {**machine, "date": "2026-12-03T08:52:15+00:00", "git_commit": "2ebf1c6"}
    assert machine_text({"machine": dated}).endswith("; run 2026-12-03 08:52 UTC at commit 2ebf1c6")
