"""Micro-batching: concurrent searches share one encoder forward and one FAISS search.

Requests wait in a bounded queue (counted in queries). One worker task on the event loop
takes the oldest waiting request, adds every waiting request with the same :class:`BatchKey`
while the batch has room, and runs the batch on a single compute thread. While that thread
works, new requests queue up and form the next batch: under load batches grow by
themselves.

No batching tax when idle: a request that finds the model idle runs at once. The worker
lingers for company (at most ``wait_s``, counted from the oldest request's arrival, so a
request that already waited while the model was busy never waits again) only while it
expects more: when the previous batch ended moments ago (within ``wait_s``) with several
requests, their clients are likely sending their next ones, and it waits until that many
have arrived or the window closes. A lone client therefore never waits, and a closed loop
of N clients keeps batches of about N instead of a batch of one followed by one of N - 1.

All model work runs on that one thread: CPU-bound work never blocks the event loop, torch's
intra-op threads are the only parallelism (set once, deliberately), and the encoder and
its tokenizer are never used by two threads at once.

Admission by expected wait: a request is refused at once with
:class:`~service.errors.Overloaded` (HTTP 429 with ``Retry-After``) when the time it would
wait before its batch starts, predicted from the measured drain rate (queries per second of
recent batches) and what is ahead of it, exceeds ``max_wait_s``: the wait *for the model*
stays near ``max_wait_s`` plus one batch, and the others learn at once that they should back
off. Time spent before the request reaches this queue (HTTP parsing and validation on a busy
event loop) is not seen here: with 64+ clients on 2 cores that, not the model, set the
measured latency (benchmarks/RESULTS.md). A full queue (``queue_max`` queries) refuses too. A
request not answered within its timeout gets :class:`~service.errors.RequestTimeout` and is
dropped from the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from retrieval.errors import InvalidValueError
from retrieval.index import SearchParamsError
from retrieval.retriever import Hit
from retrieval.runtime import configure_threads

from .errors import InvalidSearchMode, InvalidSearchParams, NotReady, Overloaded, RequestTimeout
from .metrics import ServiceMetrics
from .state import IndexHolder

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds per query assumed for Retry-After before any batch has been measured.
_FIRST_QUERY_S = 0.02
#: Mean deviations added to the mean seconds per query when predicting a wait (as TCP's
#: retransmission timer adds its RTT deviation, RFC 6298): batch times vary under load (on 2
#: busy cores, 1 in 25 batches of 32 took over twice the mean), and a prediction from the mean
#: alone let 11-16% of accepted requests wait past the budget (a probe of the queue-wait
#: histogram at 200 clients; 0-3% with the deviations). The accepted p99 this gives is in
#: benchmarks/RESULTS.md (service load, admission).
_WAIT_DEVIATIONS = 2.0
#: Longest Retry-After given (seconds): below uvicorn's keep-alive timeout (5 s), so a client that
#: waits it finds its connection still open (longer waits made clients meet closed connections).
RETRY_AFTER_MAX_S = 4.0


@dataclass(frozen=True)
class BatchKey:
    """What requests must share to be answered by one batch.

    Requests with different keys are never merged. A new request option that changes how a
    batch is computed (e.g. a retrieval ``mode``) becomes a field here.
    """

    search_params: tuple[tuple[str, int], ...] = ()
    mode: str = "dense"
    fusion: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(
        cls, search_params: Mapping[str, int] | None, mode: str = "dense", fusion: Mapping[str, Any] | None = None
    ) -> "BatchKey":
        return cls(tuple(sorted((search_params or {}).items())), mode, tuple(sorted((fusion or {}).items())))

    @property
    def params(self) -> dict[str, int] | None:
        return dict(self.search_params) or None


@dataclass(eq=False)
class SearchJob:
    """One request's queries waiting for (or in) a batch."""

    queries: list[str]
    top_k: int
    return_text: bool
    key: BatchKey
    future: asyncio.Future
    enqueued: float  # loop time


@dataclass
class SearchOutcome:
    """What one request gets back: hits per query, who answered, and where the time went."""

    hits: list[list[Hit]]
    index_version: str
    model: str
    queue_s: float
    encode_s: float
    search_s: float
    batch_queries: int = 1


@dataclass
class _BatchResult:
    hits: list[list[Hit]]
    index_version: str
    model: str
    encode_s: float
    search_s: float
    mode: str = "dense"


class MicroBatcher:
    """Bounded queue + batching worker + the single compute thread."""

    def __init__(
        self,
        holder: IndexHolder,
        metrics: ServiceMetrics,
        max_queries: int,
        wait_s: float,
        queue_max: int,
        max_wait_s: float | None = None,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.max_queries = max_queries
        self.wait_s = wait_s
        self.queue_max = queue_max
        #: Longest predicted wait before a request's batch starts that is still accepted (None: no limit).
        self.max_wait_s = max_wait_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="md2pr-compute")
        self._pending: dict[BatchKey, deque[SearchJob]] = {}
        self._depth = 0  # queries waiting (not yet in a batch)
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # The previous batch: when it ended (loop time) and how many requests it answered;
        # the load signal that decides whether a request at an idle model lingers for company.
        self._last_end = float("-inf")
        self._last_requests = 0
        # Wall seconds per query of recent batches (0: none measured yet) and their mean deviation,
        # and the running batch's start (None: idle) and size: the drain rate behind admission
        # and Retry-After.
        self._query_s = 0.0
        self._query_dev = 0.0
        self._busy_since: float | None = None
        self._running_queries = 0
        self._closed = False

    # ----------------------------------------------------------------------------- lifecycle
    def start(self, threads: int | None = None) -> None:
        """Start the worker on the running event loop; with ``threads``, first set the torch and
        FAISS thread counts *in the compute thread* (OpenMP thread counts are per thread: set only
        in the main thread, FAISS would search on every core of the machine)."""
        if threads is not None:
            self._executor.submit(configure_threads, threads)
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="md2pr-batcher")

    async def close(self) -> None:
        """Stop batching; waiting requests get 503; the compute thread finishes its batch."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for queue in self._pending.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(NotReady("the service is shutting down"))
        self._pending.clear()
        self._depth = 0
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    @property
    def depth(self) -> int:
        """Queries waiting for the model."""
        return self._depth

    async def run_in_compute(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the compute thread (between batches)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ------------------------------------------------------------------------------ requests
    def submit(
        self,
        queries: list[str],
        top_k: int,
        return_text: bool,
        search_params: Mapping[str, int] | None,
        mode: str = "dense",
        fusion: Mapping[str, Any] | None = None,
    ) -> SearchJob:
        """Queue a request or refuse it at once (429) when the queue is full."""
        if self._closed or self._arrived is None:
            raise NotReady("the service is not accepting searches (starting or shutting down)")
        n = len(queries)
        loop = asyncio.get_running_loop()
        # A request larger than the whole queue still runs when it is alone (never starved).
        if self._depth and self._depth + n > self.queue_max:
            self.metrics.rejected.labels(reason="queue_full").inc()
            retry = min((self._depth + n) * (self._query_s or _FIRST_QUERY_S), RETRY_AFTER_MAX_S)
            raise Overloaded(
                f"overloaded: {self._depth} queries are waiting (limit {self.queue_max}); retry later", retry
            )
        refusal = self.wait_refusal(n)
        if refusal is not None:
            raise refusal
        job = SearchJob(
            list(queries), top_k, return_text, BatchKey.of(search_params, mode, fusion), loop.create_future(), loop.time()
        )
        self._pending.setdefault(job.key, deque()).append(job)
        self._depth += n
        self.metrics.queue_depth.set(self._depth)
        self._arrived.set()
        return job

    async def search(
        self,
        queries: list[str],
        top_k: int,
        return_text: bool,
        search_params: Mapping[str, int] | None,
        timeout_s: float,
        mode: str = "dense",
        fusion: Mapping[str, Any] | None = None,
    ) -> SearchOutcome:
        """Queue, wait for the batch that answers it, and return this request's share."""
        job = self.submit(queries, top_k, return_text, search_params, mode, fusion)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            job.future.cancel()  # dropped if still queued; ignored if its batch is running
            self.metrics.rejected.labels(reason="timeout").inc()
            raise RequestTimeout(f"no answer within {timeout_s:g} s (the service is overloaded)") from None

    def wait_refusal(self, n: int = 1) -> Overloaded | None:
        """The 429 a request of ``n`` queries gets if its predicted wait for the model exceeds the
        budget (``max_wait_s``), counted in the metrics; None if it may queue.

        Called by :meth:`submit` with the request's size and, before the body is even read, by
        the request middleware with ``n=1`` (the least any search asks): under overload a refusal
        then costs no body parsing, validation or routing, which leaves the event loop's time to
        the requests that were accepted.
        """
        if self.max_wait_s is None or not self._depth:
            return None
        now = asyncio.get_running_loop().time()
        expected = self.expected_wait_s(n, now)
        if expected <= self.max_wait_s:
            return None
        self.metrics.rejected.labels(reason="expected_wait").inc()
        # Admission is pessimistic; when to come back is the likely drain time (the mean cost).
        drain = min(self.expected_wait_s(n, now, deviations=0.0), RETRY_AFTER_MAX_S)
        return Overloaded(
            f"overloaded: a search would wait about {expected * 1000:.0f} ms for the model "
            f"(limit {self.max_wait_s * 1000:.0f} ms, {self._depth} queries ahead); retry later",
            drain,
        )

    def expected_wait_s(self, n: int, now: float, deviations: float = _WAIT_DEVIATIONS) -> float:
        """Predicted seconds before a new request of ``n`` queries starts computing.

        What is left of the running batch (its queries at the recent seconds per query, less
        its age), plus every whole batch that runs before the one this request joins: the
        ``depth`` queries ahead fill batches of ``max_queries`` in arrival order, and the request
        joins the first with room for it, so ``(depth + n - 1) // max_queries`` full batches go
        first (with 32 queries ahead and batches of 32, one whole batch: not the 1 query
        "beyond the next batch's room" an earlier version counted, which let the wait run a
        batch past the budget). Under overload batches are full, so the per-query cost is the
        full-batch one, taken pessimistically: the recent mean plus ``deviations`` (by default
        :data:`_WAIT_DEVIATIONS`) mean deviations, so that a slow batch ahead does not carry
        admitted requests past the budget.
        Before any batch has been measured there is no estimate: 0.
        """
        if self._query_s <= 0:
            return 0.0
        query_s = self._query_s + deviations * self._query_dev
        running = 0.0
        if self._busy_since is not None:
            running = max(self._running_queries * query_s - (now - self._busy_since), 0.0)
        batches_before = (self._depth + min(n, self.max_queries) - 1) // self.max_queries
        return running + batches_before * self.max_queries * query_s

    # -------------------------------------------------------------------------------- worker
    async def _run(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._depth:
                self._arrived.clear()
                await self._arrived.wait()
            key = min((q[0].enqueued, i, k) for i, (k, q) in enumerate(self._pending.items()) if q)[2]
            batch = await self._collect(key, loop)
            if not batch:
                continue
            started = self._busy_since = loop.time()
            self._running_queries = sum(len(job.queries) for job in batch)
            try:
                result = await loop.run_in_executor(self._executor, self._compute, key, batch)
                self._deliver(batch, result, started)
            except Exception as exc:  # delivered to every request of the batch; the worker carries on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                self._busy_since = None
                self._last_end = loop.time()
                self._last_requests = len(batch)
                self._note_batch(self._last_end - started, self._running_queries)

    def _note_batch(self, seconds: float, queries: int) -> None:
        """Fold one batch's wall time (queueing excluded) per query into the running mean and mean
        deviation (RFC 6298's estimators; the first sample starts the deviation at half of it)."""
        per_query = seconds / max(queries, 1)
        if self._query_s <= 0:
            self._query_s, self._query_dev = per_query, per_query / 2
            return
        self._query_dev = 0.75 * self._query_dev + 0.25 * abs(per_query - self._query_s)
        self._query_s = 0.8 * self._query_s + 0.2 * per_query

    def _expected_requests(self, oldest_enqueued: float) -> int:
        """How many requests a batch whose oldest request arrived at ``oldest_enqueued`` waits for.

        1 (run at once) unless the previous batch ended within ``wait_s`` before that arrival
        with several requests: then as many as it had (a closed loop of clients coming back).
        A request that arrived while the model was busy has waited already: 1.
        """
        if oldest_enqueued < self._last_end:
            return 1
        if oldest_enqueued - self._last_end > self.wait_s:
            return 1
        return max(self._last_requests, 1)

    async def _collect(self, key: BatchKey, loop: asyncio.AbstractEventLoop) -> list[SearchJob]:
        """Take jobs of ``key`` (oldest first) until the batch is full, or holds as many requests
        as :meth:`_expected_requests` says, or the oldest has waited ``wait_s``."""
        assert self._arrived is not None
        queue = self._pending[key]
        deadline = queue[0].enqueued + self.wait_s
        expected = self._expected_requests(queue[0].enqueued)
        batch: list[SearchJob] = []
        size = 0
        while True:
            while queue and (not batch or size + len(queue[0].queries) <= self.max_queries):
                job = queue.popleft()
                self._depth -= len(job.queries)
                if job.future.done():  # timed out while waiting
                    continue
                batch.append(job)
                size += len(job.queries)
            self.metrics.queue_depth.set(self._depth)
            if not queue:
                del self._pending[key]
            if size >= self.max_queries or queue or not batch or len(batch) >= expected:
                return batch  # full, the next job does not fit, or nobody else is expected
            remaining = deadline - loop.time()
            if remaining <= 0:
                return batch
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return batch
            queue = self._pending.setdefault(key, deque())

    def _compute(self, key: BatchKey, batch: list[SearchJob]) -> _BatchResult:
        """On the compute thread: one encoder forward and one FAISS search for the whole batch."""
        with self.holder.lease() as served:
            texts = [q for job in batch for q in job.queries]
            flags = [job.return_text for job in batch for _ in job.queries]
            top_k = max(job.top_k for job in batch)
            retriever = served.retriever
            try:
                # Re-checked here: a hot swap may have replaced the version the route checked.
                mode = retriever.check_mode(key.mode)
                fusion = retriever.fusion.override(**dict(key.fusion)) if mode == "hybrid" else None
            except InvalidValueError as exc:
                raise InvalidSearchMode(str(exc), {"modes": list(retriever.modes)}) from exc
            t0 = time.perf_counter()
            vectors = retriever.encoder.encode_queries(texts, batch_size=len(texts)) if mode != "bm25" else None
            t1 = time.perf_counter()
            try:
                hits = retriever.search_encoded(texts, vectors, top_k, flags, key.params, mode, fusion)
            except SearchParamsError as exc:  # the user's parameters: the index itself is fine
                family = retriever.index.manifest.factory
                raise InvalidSearchParams(f"search_params: {exc}", {"index_family": family}) from exc
            t2 = time.perf_counter()
            return _BatchResult(hits, served.version, served.model, t1 - t0, t2 - t1, mode)

    def _deliver(self, batch: list[SearchJob], result: _BatchResult, started: float) -> None:
        n = sum(len(job.queries) for job in batch)
        self.metrics.encode_latency.observe(result.encode_s)
        self.metrics.search_latency.labels(mode=result.mode).observe(result.search_s)
        self.metrics.mode_queries.labels(mode=result.mode).inc(n)
        self.metrics.batch_queries.observe(n)
        self.metrics.batch_requests.observe(len(batch))
        offset = 0
        for job in batch:
            hits = result.hits[offset : offset + len(job.queries)]
            offset += len(job.queries)
            queue_s = started - job.enqueued
            self.metrics.queue_wait.observe(queue_s)
            if job.future.done():
                continue
            job.future.set_result(
                SearchOutcome(
                    hits=[h[: job.top_k] for h in hits],
                    index_version=result.index_version,
                    model=result.model,
                    queue_s=queue_s,
                    encode_s=result.encode_s,
                    search_s=result.search_s,
                    batch_queries=n,
                )
            )
