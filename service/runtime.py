"""What a running app holds (settings, metrics, the served index, the batcher) and how routes get it."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import Depends, Request

from retrieval.runtime import configure_threads

from .batching import MicroBatcher
from .metrics import ServiceMetrics
from .settings import Settings
from .state import IndexHolder, IndexManager

logger = logging.getLogger(__name__)


class ServiceRuntime:
    """Everything a running app holds: settings, metrics, the served index, the batcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.holder = IndexHolder()
        self.batcher = MicroBatcher(
            self.holder,
            self.metrics,
            max_queries=settings.batch_max_queries,
            wait_s=settings.batch_wait_ms / 1000,
            queue_max=settings.queue_max_queries,
            max_wait_s=settings.max_queue_wait_ms / 1000 or None,
        )
        self.manager = IndexManager(settings, self.holder, self.metrics, self.batcher.run_in_compute)
        self.threads = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Set the thread counts, start the batcher, load the index in the background (and watch it)."""
        self.threads = configure_threads(self.settings.torch_threads)
        self.batcher.start(self.threads)
        self._tasks.append(asyncio.create_task(self.manager.load_initial(), name="md2pr-initial-load"))
        if self.settings.watch_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self.manager.watch(self.settings.watch_interval_s), name="md2pr-watch")
            )
        logger.info("loading index %s on %d threads", self.settings.index, self.threads)

    async def stop(self) -> None:
        """Cancel the background tasks, drain the batcher, release the index."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.batcher.close()
        self.holder.swap(None)


async def runtime_of(request: Request) -> ServiceRuntime:
    """The app's runtime (``app.state.runtime``, set by :func:`service.app.create_app`).

    ``async`` although it never awaits: FastAPI runs a plain ``def`` dependency in its thread
    pool, a thread hop on every request for an attribute read."""
    return request.app.state.runtime


#: A route parameter that receives the app's :class:`ServiceRuntime`.
Runtime = Annotated[ServiceRuntime, Depends(runtime_of)]
