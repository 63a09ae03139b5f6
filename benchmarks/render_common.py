"""Helpers shared by the RESULTS.md section renderers (``benchmarks/render_*.py``)."""

from __future__ import annotations


def machine_text(report: dict) -> str:
    """The machine a report ran on, as one phrase: cores, CPU model, threads and load average at start."""
    m = report["machine"]
    load = ", ".join(str(x) for x in m.get("load_average_at_start", []))
    return f"{m['cpus']} CPU cores ({m.get('cpu_model') or 'unknown CPU'}), {m['threads']} threads, load average at start {load}"
