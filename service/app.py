"""The FastAPI application factory (``uvicorn service.app:create_app --factory`` or ``md2pr-serve``).

The routes are in :mod:`service.routes`, what the app holds in :mod:`service.runtime`.
Startup loads the encoder and the index in the background: ``/healthz`` answers at once,
``/readyz`` (and every search) says 503 until both are loaded. Searches go through the
micro-batcher (:mod:`service.batching`), which runs all model work on one compute thread,
so the event loop only parses, queues and serialises. Index versions are swapped at run
time by ``POST /admin/reload`` or the ``CURRENT`` watcher (:mod:`service.state`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .errors import install_error_handlers
from .middleware import AdmissionMiddleware, RequestMiddleware, setup_access_log
from .routes import router
from .runtime import ServiceRuntime
from .settings import Settings

__all__ = ["ServiceRuntime", "create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment (``MD2PR_*``)."""
    settings = settings or Settings()
    runtime = ServiceRuntime(settings)
    if settings.access_log:
        setup_access_log()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="MD2PR dense passage retrieval",
        version="0.2.0",
        description=(
            "Dense passage search with a distilled dual encoder over a FAISS index. Every error has the body "
            "`{error, type, detail}`. Concurrent searches are micro-batched; a full queue answers 429 with Retry-After."
        ),
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    # Innermost: a search refused for its expected wait is answered before it is parsed.
    app.add_middleware(AdmissionMiddleware, refusal=runtime.batcher.wait_refusal, paths=frozenset({"/search"}))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
        )
    # Added last, so outermost: it sees every request, CORS preflights and crashes included.
    app.add_middleware(
        RequestMiddleware,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        access_log=settings.access_log,
    )

    app.include_router(router)
    _document_runtime_limits(app, settings)
    return app


def _document_runtime_limits(app: FastAPI, settings: Settings) -> None:
    """Put the limits that come from settings into the OpenAPI schema (pydantic sees only static ones)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        queries = schema["components"]["schemas"]["SearchRequest"]["properties"]["queries"]
        queries["maxItems"] = settings.max_queries_per_request
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
