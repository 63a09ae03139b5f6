"""Helpers shared by the RESULTS.md section renderers (``benchmarks/render_*.py``)."""

from __future__ import annotations


def machine_text(report: dict) -> str:
    """The machine a report ran on, as one phrase: cores, CPU model, threads and load average at start."""
    m = report["machine"]
    load = ", ".join(str(x) for x in m.get("load_average_at_start", []))
    text = f"{m['cpus']} CPU cores ({m.get('cpu_model') or 'unknown CPU'}), {m['threads']} threads, load average at start {load}"
    if m.get("date") and m.get("git_commit"):  # two runs of one benchmark are told apart by when and on what code
        text += f"; run {m['date'][:16].replace('T', ' ')} UTC at commit {m['git_commit']}"
    return text
