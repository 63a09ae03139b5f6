"""The served index version and its hot swap.

:class:`IndexHolder` keeps the version that answers searches. A batch *leases* the version
for as long as it runs; a swap replaces the served version atomically (under a lock, one
reference assignment), and the old version is closed only when its last lease ends, so
requests in flight finish on the version they started on.

:class:`IndexManager` loads a new version beside the old one, checks it (manifest and file
sizes, encoder fingerprint, dimension, a probe query) and only then swaps it in; a broken or
mismatched version is refused with a readable message while the old one keeps serving.
The encoder is reused across versions built by the same encoder (same fingerprint): only a
version from another encoder loads a model again. The query encoder runs on the backend of
``MD2PR_BACKEND``; a version whose encoder has no passing parity record for that backend is
refused like any broken version (the message names the command that makes one).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from retrieval.encoder import DualEncoder
from retrieval.errors import RetrievalError
from retrieval.index_versions import resolve_index_dir
from retrieval.retriever import Retriever

from .errors import NotReady, ReloadRefused
from .metrics import ServiceMetrics
from .schemas import ReloadResponse
from .settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class ServedIndex:
    """One loaded index version with its encoder; closed when retired and no longer leased."""

    retriever: Retriever
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    leases: int = 0
    retired: bool = False

    @property
    def directory(self) -> Path:
        return self.retriever.index.directory

    @property
    def version(self) -> str:
        return self.retriever.index.directory.name

    @property
    def model(self) -> str:
        """Short encoder fingerprint, as reported in every response."""
        return self.retriever.encoder.fingerprint[:12]

    @property
    def backend(self) -> str:
        """What runs the query encoder (torch, onnx, onnx-int8)."""
        return self.retriever.encoder.backend.name

    def close(self) -> None:
        logger.info("closing retired index version %s", self.version)
        self.retriever.close()


class IndexHolder:
    """The served :class:`ServedIndex`, swapped atomically, closed when its last lease ends."""

    def __init__(self) -> None:
        self._current: ServedIndex | None = None
        self._lock = threading.Lock()  # leases are taken on the compute thread, swaps on the event loop
        self.loading = True
        self.last_error: str | None = None

    @property
    def current(self) -> ServedIndex | None:
        return self._current

    def require(self) -> ServedIndex:
        """The served version, or :class:`NotReady` saying why there is none."""
        served = self._current
        if served is None:
            if self.loading or self.last_error is None:
                raise NotReady("the service is starting: the index and encoder are still loading")
            raise NotReady(f"no index is loaded: {self.last_error}", {"last_error": self.last_error})
        return served

    @contextmanager
    def lease(self) -> Iterator[ServedIndex]:
        """Use the served version for one batch; a concurrent swap cannot close it under you."""
        with self._lock:
            served = self.require()
            served.leases += 1
        try:
            yield served
        finally:
            with self._lock:
                served.leases -= 1
                close = served.retired and served.leases == 0
            if close:
                served.close()

    def swap(self, new: ServedIndex | None) -> ServedIndex | None:
        """Serve ``new`` from now on; returns the old version (closed now or after its last lease)."""
        with self._lock:
            old, self._current = self._current, new
            close = False
            if old is not None:
                old.retired = True
                close = old.leases == 0
        if close and old is not None:
            old.close()
        return old


def index_info(served: ServedIndex) -> dict[str, Any]:
    """Facts about a served version for ``/info`` (the manifest's own words)."""
    index = served.retriever.index
    manifest = index.manifest
    return {
        "version": served.version,
        "family": manifest.factory,
        "backend": manifest.backend,
        "metric": manifest.metric,
        "dimension": manifest.dimension,
        "count": manifest.count,
        "created_at": manifest.created_at,
        "build_quality": dict(manifest.quality or {}),  # recall@k against exact search, from the build's gate
        "search_params": index.search_params,
        "loaded_at": served.loaded_at,
        "modes": list(served.retriever.modes),
        "lexical": manifest.lexical.model_dump() if manifest.lexical else None,
        "fusion": served.retriever.fusion.to_dict(),
    }


class IndexManager:
    """Loads, checks and swaps index versions (initial load, ``/admin/reload``, the CURRENT watcher)."""

    def __init__(
        self,
        settings: Settings,
        holder: IndexHolder,
        metrics: ServiceMetrics,
        run_in_compute: Callable[[Callable[[], T]], Awaitable[T]],
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self._run_in_compute = run_in_compute
        self._lock = asyncio.Lock()
        self.reloads = 0
        # The query encoder of the version swapped out last (when the new one serves another):
        # kept loaded so that swapping back (a rollback, or alternating a student with its base
        # over the same vectors) reuses it instead of reading and hashing the model again while
        # the cores are serving. One encoder at most: the cost is one model's memory.
        self._standby: DualEncoder | None = None

    async def load_initial(self) -> None:
        """The first load (in the background: /healthz answers, /readyz says 503 until it is done)."""
        try:
            await self.reload()
        except ReloadRefused as exc:
            logger.error("cannot serve: %s", exc)
        finally:
            self.holder.loading = False

    async def reload(self) -> ReloadResponse:
        """Load the version ``CURRENT`` names beside the served one, check it, swap it in.

        Raises :class:`ReloadRefused` (and keeps serving the old version) when anything is wrong.
        """
        async with self._lock:
            started = time.perf_counter()
            current = self.holder.current
            try:
                target = await asyncio.to_thread(resolve_index_dir, self.settings.index)
            except Exception as exc:
                raise self._refused(None, current, exc) from exc
            if current is not None and target == current.directory:
                self.metrics.reloads.labels(outcome="unchanged").inc()
                return ReloadResponse(
                    status="unchanged",
                    index_version=current.version,
                    previous_version=current.version,
                    encoder_reused=True,
                    took_ms=_ms(started),
                )
            reuse = [e for e in (current.retriever.encoder if current is not None else None, self._standby) if e]
            try:
                retriever = await asyncio.to_thread(
                    Retriever.open, target, self.settings.encoder_path, reuse, self.settings.backend
                )
            except Exception as exc:
                raise self._refused(target, current, exc) from exc
            try:
                # On the compute thread: the encoder (and its tokenizer) is used by one thread only.
                await self._run_in_compute(lambda: self._probe(retriever))
            except Exception as exc:
                retriever.close()
                raise self._refused(target, current, exc) from exc
            served = ServedIndex(retriever)
            self.holder.swap(served)
            if current is not None and current.retriever.encoder is not retriever.encoder:
                self._standby = current.retriever.encoder
            self.holder.last_error = None
            self.reloads += 1
            self.metrics.reloads.labels(outcome="swapped").inc()
            self.metrics.set_index(
                served.version, retriever.index.manifest.factory, served.model, retriever.index.manifest.count
            )
            logger.info(
                "serving index version %s (%d passages, %s) with encoder %s on %s%s",
                served.version,
                retriever.index.manifest.count,
                retriever.index.manifest.factory,
                served.model,
                served.backend,
                " (reused)" if any(retriever.encoder is e for e in reuse) else "",
            )
            return ReloadResponse(
                status="swapped",
                index_version=served.version,
                previous_version=current.version if current is not None else None,
                encoder_reused=any(retriever.encoder is e for e in reuse),
                took_ms=_ms(started),
            )

    def _probe(self, retriever: Retriever) -> None:
        """A real query through the new version: it must return finite scores."""
        if retriever.index.manifest.count == 0:
            raise ValueError("the index holds no passages")
        hits = retriever.search([self.settings.probe_query], top_k=min(10, retriever.index.manifest.count))[0]
        if not hits:
            raise ValueError("the probe query returned no hits")
        bad = [h.score for h in hits if not math.isfinite(h.score)]
        if bad:
            raise ValueError(f"the probe query returned non-finite scores ({bad[0]})")

    def _refused(self, target: Path | None, current: ServedIndex | None, exc: Exception) -> ReloadRefused:
        what = f"index version {target.name}" if target is not None else f"index at {self.settings.index}"
        reason = str(exc).strip() or type(exc).__name__
        serving = f"; still serving {current.version}" if current is not None else ""
        message = f"{what} refused: {reason}{serving}"
        if not isinstance(exc, (ValueError, OSError, RetrievalError)):  # a bug, not a bad artifact
            logger.error("unexpected error while loading %s", what, exc_info=exc)
        logger.warning("reload refused: %s", message)
        self.holder.last_error = message
        self.metrics.reloads.labels(outcome="refused").inc()
        return ReloadRefused(message, {"serving": current.version if current is not None else None})

    async def watch(self, interval_s: float) -> None:
        """Poll ``CURRENT`` and reload when it names another version (a refused one is not retried)."""
        refused: Path | None = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                target = await asyncio.to_thread(resolve_index_dir, self.settings.index)
            except Exception:  # a half-set-up root: wait for the next poll
                continue
            current = self.holder.current
            if target == refused or (current is not None and target == current.directory):
                continue
            try:
                await self.reload()
            except ReloadRefused:
                refused = target


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
