"""The FastAPI application factory.

The lifespan loads the encoder and the index once; requests run in the worker threadpool
(CPU-bound work never blocks the event loop) and take turns on the model, whose torch
threads already use every core.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from retrieval.retriever import Retriever
from retrieval.runtime import configure_threads

from .errors import install_error_handlers
from .schemas import HealthResponse, SearchHit, SearchRequest, SearchResponse
from .settings import Settings

logger = logging.getLogger(__name__)


class SearchState:
    """What the lifespan loads: the retriever and a lock that serialises model calls."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.version = retriever.index.directory.name
        self.model = retriever.encoder.fingerprint[:12]
        self.lock = threading.Lock()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment (``MD2PR_*``)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threads = configure_threads(settings.torch_threads)
        retriever = Retriever.open(settings.index, settings.encoder_path)
        app.state.search = SearchState(retriever)
        logger.info(
            "serving index %s (%d passages) with encoder %s on %d threads",
            retriever.index.directory, retriever.index.manifest.count, app.state.search.model, threads,
        )
        yield
        retriever.close()

    app = FastAPI(
        title="MD2PR dense passage retrieval",
        version="0.1.0",
        description="Dense passage search with a distilled dual encoder over a FAISS index.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness")
    def healthz() -> HealthResponse:
        return HealthResponse()

    @app.post("/search", response_model=SearchResponse, response_model_exclude_none=True, summary="Dense search")
    def search(body: SearchRequest, request: Request) -> SearchResponse:
        state: SearchState = request.app.state.search
        started = time.perf_counter()
        with state.lock:
            hits = state.retriever.search([body.query], body.top_k, body.return_text)[0]
        took_ms = (time.perf_counter() - started) * 1000
        return SearchResponse(
            query=body.query,
            hits=[SearchHit(docid=h.docid, score=h.score, rank=h.rank, title=h.title, text=h.text) for h in hits],
            index_version=state.version,
            model=state.model,
            took_ms=round(took_ms, 3),
        )

    return app
