"""The service's own registry carries the process metrics an operator watches for leaks."""

from __future__ import annotations

import os

from service.metrics import ServiceMetrics


def test_process_memory_is_exported_with_the_service_metrics() -> None:
    text = ServiceMetrics().render().decode()
    rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes ")]
    assert len(rss) == 1
    value = float(rss[0].split()[1])
    with open(f"/proc/{os.getpid()}/status") as status:
        vm_rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    assert abs(value - vm_rss_kb * 1024) < 0.2 * vm_rss_kb * 1024  # this process's RSS, not a constant
    assert "md2pr_queue_depth" in text
