"""The micro-batcher's scheduling: no batching tax at an idle model, batches under load.

The batcher runs on a real event loop with its compute step replaced by a recorder that can
be held (a threading.Event), so "the model is busy" is a fact of the test, never a timing.
The window (``wait_s``) is set to 30 s throughout: a request that waited for it would make
its test time out instead of passing, so a pass proves nobody lingered.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batching import BatchKey, MicroBatcher, SearchJob, _BatchResult
from service.metrics import ServiceMetrics

WINDOW_S = 30.0
LIMIT_S = 10.0  # far below the window: an answer within it was not held back by the window


class RecordingBatcher(MicroBatcher):
    """A :class:`MicroBatcher` whose compute step records each batch's request sizes."""

    def __init__(self, wait_s: float = WINDOW_S, max_queries: int = 32) -> None:
        super().__init__(holder=None, metrics=ServiceMetrics(), max_queries=max_queries, wait_s=wait_s, queue_max=256)  # type: ignore[arg-type]
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def _compute(self, key: BatchKey, batch: list[SearchJob]) -> _BatchResult:
        self.batches.append([len(job.queries) for job in batch])
        self.entered.set()
        assert self.release.wait(LIMIT_S), "compute never released"
        hits = [[] for job in batch for _ in job.queries]
        return _BatchResult(hits, "v1", "model", encode_s=0.001, search_s=0.001)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, LIMIT_S * 2))


async def started(batcher: RecordingBatcher) -> RecordingBatcher:
    batcher.start()
    return batcher


async def search(batcher: MicroBatcher, n: int = 1):
    return await batcher.search([f"q{i}" for i in range(n)], 10, False, None, timeout_s=LIMIT_S)


def test_a_lone_request_at_an_idle_model_runs_at_once() -> None:
    async def body() -> None:
        batcher = await started(RecordingBatcher())
        try:
            for _ in range(3):  # one client, one request after another: never waits for company
                outcome = await asyncio.wait_for(search(batcher), LIMIT_S)
                assert outcome.queue_s < WINDOW_S / 3
            assert batcher.batches == [[1], [1], [1]]
        finally:
            await batcher.close()

    run(body())


def test_requests_arriving_while_busy_form_the_next_batch_without_waiting() -> None:
    async def body() -> None:
        batcher = await started(RecordingBatcher())
        try:
            batcher.release.clear()
            first = asyncio.create_task(search(batcher))
            while not batcher.entered.is_set():  # the compute thread holds the first request
                await asyncio.sleep(0.001)
            rest = [asyncio.create_task(search(batcher, n)) for n in (1, 2, 3)]
            while batcher.depth < 6:
                await asyncio.sleep(0.001)
            batcher.release.set()
            await asyncio.wait_for(asyncio.gather(first, *rest), LIMIT_S)
            assert batcher.batches == [[1], [1, 2, 3]]
        finally:
            await batcher.close()

    run(body())


def test_after_a_batch_of_n_the_next_waits_for_n_requests_at_most() -> None:
    """A closed loop of 3 clients: the 3 requests sent after a batch of 3 are batched again."""

    async def body() -> None:
        batcher = await started(RecordingBatcher())
        try:
            batcher.release.clear()
            first = asyncio.create_task(search(batcher))
            while not batcher.entered.is_set():
                await asyncio.sleep(0.001)
            trio = [asyncio.create_task(search(batcher)) for _ in range(3)]
            while batcher.depth < 3:
                await asyncio.sleep(0.001)
            batcher.release.set()
            await asyncio.wait_for(asyncio.gather(first, *trio), LIMIT_S)
            assert batcher.batches == [[1], [1, 1, 1]]
            # The three clients come back one by one, at an idle model: the first lingers
            # (inside the window) until the other two are there, then all three run together.
            nxt = [asyncio.create_task(search(batcher))]
            for _ in range(50):
                await asyncio.sleep(0.001)
            assert len(batcher.batches) == 2, "the first returning request did not wait for company"
            nxt += [asyncio.create_task(search(batcher)) for _ in range(2)]
            await asyncio.wait_for(asyncio.gather(*nxt), LIMIT_S)
            assert batcher.batches[2:] == [[1, 1, 1]]
        finally:
            await batcher.close()

    run(body())


@pytest.mark.parametrize("gap_over_window", [True, False])
def test_the_previous_batch_only_counts_within_the_window(gap_over_window: bool) -> None:
    """Expected company decays: after more than ``wait_s`` of idleness a request runs alone."""
    batcher = RecordingBatcher(wait_s=0.5)
    batcher._last_end, batcher._last_requests = 100.0, 4
    arrival = 100.0 + (0.6 if gap_over_window else 0.4)
    assert batcher._expected_requests(arrival) == (1 if gap_over_window else 4)
    assert batcher._expected_requests(99.0) == 1  # arrived while that batch ran: it has waited already


def test_expected_wait_counts_the_running_batch_and_the_whole_batches_ahead() -> None:
    batcher = RecordingBatcher(max_queries=4)
    assert batcher.expected_wait_s(1, now=0.0) == 0.0  # nothing measured yet: no estimate, admit
    batcher._query_s = 0.01
    batcher._depth = 10  # batches [4] [4] [2 + this one]: two whole batches go first
    assert batcher.expected_wait_s(1, now=0.0) == pytest.approx(2 * 4 * 0.01)  # idle model
    batcher._busy_since, batcher._running_queries = 0.0, 4  # a batch of 4 started at t=0 (0.04 s expected)
    assert batcher.expected_wait_s(1, now=0.01) == pytest.approx(0.03 + 0.08)
    assert batcher.expected_wait_s(1, now=1.0) == pytest.approx(0.08)  # overran its estimate: none left
    batcher._depth = 2
    assert batcher.expected_wait_s(2, now=1.0) == 0.0  # fits in the next batch
    batcher._depth = 4  # the next batch is full: this one waits for all of it, not for 1 query of it
    assert batcher.expected_wait_s(1, now=1.0) == pytest.approx(4 * 0.01)
    assert batcher.expected_wait_s(9, now=1.0) == pytest.approx(4 * 0.01)  # too big to share: it runs alone next


def test_the_predicted_cost_per_query_adds_the_deviation_of_recent_batches() -> None:
    steady, jumpy = RecordingBatcher(max_queries=4), RecordingBatcher(max_queries=4)
    for _ in range(40):
        steady._note_batch(0.04, 4)  # 0.01 s a query, every batch alike
    for seconds in [0.02, 0.06] * 20:  # the same mean, half the batches 3x slower than the others
        jumpy._note_batch(seconds, 4)
    assert steady._query_s == pytest.approx(0.01) and steady._query_dev < 1e-6  # decays geometrically from the first half
    assert jumpy._query_s == pytest.approx(0.01, abs=0.003) and jumpy._query_dev > 0.003
    for batcher in (steady, jumpy):
        batcher._depth = 4  # one whole batch ahead
    assert steady.expected_wait_s(1, now=0.0) == pytest.approx(4 * 0.01, rel=1e-3)
    expected = 4 * (jumpy._query_s + 2.0 * jumpy._query_dev)
    assert jumpy.expected_wait_s(1, now=0.0) == pytest.approx(expected) and expected > 4 * 0.016
    first = RecordingBatcher()
    first._note_batch(0.1, 10)  # the first batch: its cost, and half of it as the deviation
    assert (first._query_s, first._query_dev) == pytest.approx((0.01, 0.005))


def test_retry_after_is_the_mean_drain_time_capped_below_the_keep_alive_timeout() -> None:
    from service.batching import RETRY_AFTER_MAX_S

    async def body() -> None:
        batcher = RecordingBatcher(max_queries=4)
        batcher.max_wait_s = 0.1
        batcher._arrived = asyncio.Event()
        batcher._query_s, batcher._query_dev = 0.1, 0.1  # pessimistic cost 0.3 s a query
        batcher._depth = 8  # two whole batches ahead: 2.4 s pessimistic, 0.8 s at the mean
        refused = batcher.wait_refusal()
        assert refused is not None and "about 2400 ms" in str(refused)  # admission: the pessimistic figure
        assert refused.headers["Retry-After"] == "1"  # when to come back: ceil(0.8 s), the mean
        batcher._depth = 400  # 100 whole batches: 40 s at the mean
        assert batcher.wait_refusal().headers["Retry-After"] == str(int(RETRY_AFTER_MAX_S)) == "4"

    run(body())


def test_a_request_predicted_to_wait_past_the_budget_gets_429_at_once_and_loses_nothing() -> None:
    from service.errors import Overloaded

    async def body() -> None:
        batcher = RecordingBatcher(max_queries=2)
        batcher.max_wait_s = 0.35
        batcher.start()
        try:
            batcher.release.clear()
            first = asyncio.create_task(search(batcher))
            while not batcher.entered.is_set():
                await asyncio.sleep(0.001)
            batcher._query_s = 0.1  # as if measured: 0.1 s a query
            accepted = [asyncio.create_task(search(batcher)) for _ in range(3)]
            while batcher.depth < 3:
                await asyncio.sleep(0.001)
            # Each was admitted: the third saw one whole batch of 2 ahead (0.2 s) + at most 0.1 s of the
            # running one. A request of 2 behind the 3 waiting has two whole batches ahead: 0.4 s > 0.35.
            with pytest.raises(Overloaded) as refused:
                batcher.submit(["q"] * 2, 10, False, None)
            assert "would wait about" in str(refused.value) and refused.value.headers["Retry-After"] == "1"
            assert batcher.depth == 3  # the refused request took nothing from the queue
            batcher.release.set()
            await asyncio.wait_for(asyncio.gather(first, *accepted), LIMIT_S)
            assert sum(len(b) for b in batcher.batches) == 4  # every accepted request was answered
        finally:
            await batcher.close()

    run(body())


def test_the_compute_thread_runs_on_the_configured_thread_count() -> None:
    """OpenMP thread counts are per thread: FAISS in the compute thread must get the setting too."""
    import faiss
    import torch

    async def body() -> tuple[int, int]:
        batcher = RecordingBatcher()
        batcher.start(threads=1)
        try:
            return await batcher.run_in_compute(lambda: (faiss.omp_get_max_threads(), torch.get_num_threads()))
        finally:
            await batcher.close()

    previous = torch.get_num_threads()
    try:
        assert run(body()) == (1, 1)
    finally:
        from retrieval.runtime import configure_threads

        configure_threads(previous)
