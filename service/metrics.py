"""Prometheus metrics of one app instance (``GET /metrics``).

Each app has its own :class:`~prometheus_client.CollectorRegistry` (several apps live in one
test process). Names follow Prometheus conventions: ``_total`` counters, ``_seconds``
histograms, base units. Route labels are route templates (``/search``), never raw paths, so
label cardinality stays bounded whatever clients send.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 10 s: model calls on CPU sit in the 5-200 ms range.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """Every metric the service exports, registered in a fresh registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # no `_created` twin of every series: half the scrape, nothing we use
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "md2pr_http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "md2pr_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "md2pr_queue_wait_seconds",
            "time a search request waited before its batch started",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.encode_latency = Histogram(
            "md2pr_encode_seconds", "encoder forward time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.search_latency = Histogram(
            "md2pr_search_seconds",
            "search (FAISS and/or BM25, fusion) and passage lookup time per batch, by mode",
            ["mode"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.mode_queries = Counter(
            "md2pr_search_queries_total", "queries answered, by search mode", ["mode"], registry=r
        )
        self.batch_queries = Histogram(
            "md2pr_batch_queries", "queries per encoder batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "md2pr_batch_requests", "HTTP requests merged into one encoder batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("md2pr_queue_depth", "queries waiting for the model", registry=r)
        self.rejected = Counter(
            "md2pr_rejected_total", "searches refused before reaching the model, by reason", ["reason"], registry=r
        )
        self.ready = Gauge("md2pr_ready", "1 when an index and encoder are loaded", registry=r)
        self.index_passages = Gauge("md2pr_index_passages", "passages in the served index", registry=r)
        self.index_info = Gauge(
            "md2pr_index_info", "the served index version (value 1)", ["version", "family", "model"], registry=r
        )
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds...: what an operator
        # (and benchmarks/service_soak.py) watches for leaks.
        ProcessCollector(registry=r)
        self.reloads = Counter(
            "md2pr_index_reloads_total",
            "index reload attempts by outcome (swapped, unchanged, refused)",
            ["outcome"],
            registry=r,
        )

    def set_index(self, version: str, family: str, model: str, count: int) -> None:
        """Point the index gauges at a newly served version."""
        self.index_info.clear()
        self.index_info.labels(version=version, family=family, model=model).set(1)
        self.index_passages.set(count)
        self.ready.set(1)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
