"""The FastAPI application factory (``uvicorn service.app:create_app --factory`` or ``md2pr-serve``).

Startup loads the encoder and the index in the background: ``/healthz`` answers at once,
``/readyz`` (and every search) says 503 until both are loaded. Searches go through the
micro-batcher (:mod:`service.batching`), which runs all model work on one compute thread,
so the event loop only parses, queues and serialises. Index versions are swapped at run
time by ``POST /admin/reload`` or the ``CURRENT`` watcher (:mod:`service.state`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader
from pydantic import ValidationError

from retrieval.errors import InvalidValueError
from retrieval.runtime import configure_threads

from .batching import MicroBatcher, SearchOutcome
from .errors import (
    ErrorBody,
    Forbidden,
    InvalidSearchMode,
    PayloadTooLarge,
    Unauthorized,
    install_error_handlers,
)
from .metrics import CONTENT_TYPE, ServiceMetrics
from .middleware import RequestMiddleware, setup_access_log
from .schemas import (
    MAX_QUERY_CHARS,
    DECIMAL_DIGITS_ONLY,
    MAX_TOP_K,
    NOT_BLANK_PATTERN,
    SCIFACT_CLAIM,
    BatchSearchResponse,
    HealthResponse,
    InfoResponse,
    QueryResult,
    ReadyResponse,
    ReloadResponse,
    SearchHit,
    SearchMode,
    SearchRequest,
    SearchResponse,
)
from .settings import Settings
from .state import IndexHolder, IndexManager, index_info

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

_ERROR_TEXT = {
    400: "the body could not be read as text (not UTF-8)",
    401: "admin route without the X-API-Key header",
    403: "wrong API key, or admin routes disabled (no MD2PR_ADMIN_API_KEY)",
    409: "the new index version failed its checks; the old one keeps serving",
    413: "request body or query batch too large",
    422: "invalid request (body shape, limits, or search_params the index family lacks)",
    429: "overloaded: the query queue is full; see Retry-After",
    500: "internal error; the body holds a request id",
    503: "not ready: the index and encoder are not loaded (yet)",
    504: "no answer within the request timeout",
}


API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the value of MD2PR_ADMIN_API_KEY")


def require_admin(request: Request, key: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
    """Admin routes: the configured key, compared in constant time; none configured means disabled."""
    configured = request.app.state.runtime.settings.admin_api_key
    if configured is None or not configured.get_secret_value():
        raise Forbidden("admin routes are disabled: the service has no MD2PR_ADMIN_API_KEY")
    if not key:
        raise Unauthorized("admin routes need the X-API-Key header")
    if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), configured.get_secret_value().encode("utf-8")):
        raise Forbidden("wrong API key")


def single_valued_query(request: Request) -> None:
    """Refuse a query-string parameter given more than once (422, as a schema violation).

    Every query parameter of this API takes one value; Starlette would keep the last of
    ``?top_k=abc&top_k=3`` silently, so a client's duplicated or conflicting parameter would pass.
    """
    counts = Counter(name for name, _ in request.query_params.multi_items())
    repeated = [name for name, n in counts.items() if n > 1]
    if repeated:
        raise RequestValidationError(
            [
                {"type": "repeated_parameter", "loc": ("query", name), "msg": f"given {counts[name]} times; give it once"}
                for name in repeated
            ]
        )


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in codes}


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
        self.threads = configure_threads(self.settings.torch_threads)
        self.batcher.start(self.threads)
        self._tasks.append(asyncio.create_task(self.manager.load_initial(), name="md2pr-initial-load"))
        if self.settings.watch_interval_s > 0:
            self._tasks.append(
                asyncio.create_task(self.manager.watch(self.settings.watch_interval_s), name="md2pr-watch")
            )
        logger.info("loading index %s on %d threads", self.settings.index, self.threads)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.batcher.close()
        self.holder.swap(None)


def _page_and_policy() -> tuple[str, str]:
    """The search page and a Content-Security-Policy that allows exactly its inline script and style."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return page, policy


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the environment (``MD2PR_*``)."""
    settings = settings or Settings()
    runtime = ServiceRuntime(settings)
    page, page_policy = _page_and_policy()
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

    # -------------------------------------------------------------------------------- routes
    @app.get("/", include_in_schema=False)
    async def search_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_policy, "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", response_model=HealthResponse, summary="Liveness: the process serves HTTP")
    async def healthz() -> HealthResponse:
        return HealthResponse()

    @app.get(
        "/readyz",
        response_model=ReadyResponse,
        summary="Readiness: an index and its encoder are loaded",
        responses=_errors(503),
    )
    async def readyz() -> ReadyResponse:
        return ReadyResponse(index_version=runtime.holder.require().version)

    @app.get(
        "/info",
        response_model=InfoResponse,
        summary="The served model, index version and settings",
        responses=_errors(503),
    )
    async def info() -> InfoResponse:
        served = runtime.holder.require()
        encoder = served.retriever.encoder
        return InfoResponse.model_validate(
            {
                "model": {
                    "fingerprint": encoder.fingerprint,
                    "source": encoder.source,
                    "dimension": encoder.dimension,
                    "pooling": encoder.config.pooling,
                    "normalize": encoder.config.normalize,
                    "max_query_length": encoder.config.max_query_length,
                },
                "index": index_info(served),
                "serving": {
                    "batch_max_queries": settings.batch_max_queries,
                    "batch_wait_ms": settings.batch_wait_ms,
                    "queue_max_queries": settings.queue_max_queries,
                    "max_queue_wait_ms": settings.max_queue_wait_ms,
                    "max_queries_per_request": settings.max_queries_per_request,
                    "request_timeout_s": settings.request_timeout_s,
                    "torch_threads": runtime.threads,
                    "reloads": runtime.manager.reloads,
                },
            }
        )

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}, "description": "text format"}
        },
    )
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    async def answer(
        texts: list[str],
        top_k: int,
        return_text: bool,
        params: dict[str, int] | None,
        response: Response,
        mode: str = "dense",
        fusion: dict[str, Any] | None = None,
    ) -> SearchOutcome:
        if len(texts) > settings.max_queries_per_request:
            raise PayloadTooLarge(
                f"{len(texts)} queries in one request; the limit is {settings.max_queries_per_request}",
                {"limit_queries": settings.max_queries_per_request},
            )
        retriever = runtime.holder.require().retriever
        try:  # refuse a mode or fusion setting the served version cannot take before queueing
            if retriever.check_mode(mode) == "hybrid":
                retriever.fusion.override(**(fusion or {}))
        except InvalidValueError as exc:
            raise InvalidSearchMode(str(exc), {"modes": list(retriever.modes)}) from exc
        outcome = await runtime.batcher.search(
            texts, top_k, return_text, params, settings.request_timeout_s, mode=mode, fusion=fusion
        )
        response.headers["Server-Timing"] = (
            f"queue;dur={outcome.queue_s * 1000:.2f}, encode;dur={outcome.encode_s * 1000:.2f}, "
            f"search;dur={outcome.search_s * 1000:.2f}"
        )
        return outcome

    def hits_of(hits: list, include_scores: bool = False) -> list[SearchHit]:
        return [
            SearchHit(
                docid=h.docid,
                score=h.score,
                rank=h.rank,
                title=h.title,
                text=h.text,
                dense_score=h.dense_score if include_scores else None,
                bm25_score=h.bm25_score if include_scores else None,
            )
            for h in hits
        ]

    search_errors = _errors(413, 422, 429, 503, 504)
    body_errors = _errors(400)

    @app.post(
        "/search",
        response_model=SearchResponse | BatchSearchResponse,
        response_model_exclude_none=True,
        summary="Search (dense, BM25 or hybrid) for one query or a batch",
        responses={**search_errors, **body_errors},
    )
    async def search(body: SearchRequest, response: Response) -> SearchResponse | BatchSearchResponse:
        started = time.perf_counter()
        texts = body.texts
        params = body.search_params.as_mapping() if body.search_params else None
        fusion = body.fusion.as_overrides() if body.fusion else None
        outcome = await answer(texts, body.top_k, body.return_text, params, response, body.mode, fusion)
        took_ms = round((time.perf_counter() - started) * 1000, 3)
        if body.query is not None:
            return SearchResponse(
                query=body.query,
                hits=hits_of(outcome.hits[0], body.include_scores),
                index_version=outcome.index_version,
                model=outcome.model,
                took_ms=took_ms,
            )
        return BatchSearchResponse(
            results=[QueryResult(query=q, hits=hits_of(h, body.include_scores)) for q, h in zip(texts, outcome.hits)],
            index_version=outcome.index_version,
            model=outcome.model,
            took_ms=took_ms,
        )

    @app.get(
        "/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        summary="Search for one query (quick use: /search?q=...&mode=hybrid)",
        description="Each parameter at most once (a repeated one is 422); `top_k` in decimal digits.",
        responses=search_errors,
        dependencies=[Depends(single_valued_query)],
    )
    async def search_get(
        response: Response,
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                description=f"the query, 1-{MAX_QUERY_CHARS} characters, not blank",
                examples=[SCIFACT_CLAIM],
                json_schema_extra={"pattern": NOT_BLANK_PATTERN},
            ),
        ],
        top_k: Annotated[
            int, Query(ge=1, le=MAX_TOP_K, description=f"hits, 1-{MAX_TOP_K}", examples=[10]), DECIMAL_DIGITS_ONLY
        ] = 10,
        return_text: Annotated[bool, Query(description="include each hit's title and text", examples=[True])] = True,
        mode: Annotated[SearchMode, Query(description="dense, bm25 or hybrid (GET /info lists the served modes)")] = "dense",
    ) -> SearchResponse:
        started = time.perf_counter()
        try:
            body = SearchRequest(query=q, top_k=top_k, return_text=return_text, mode=mode)
        except ValidationError as exc:  # the same checks as the body, reported against the parameter
            raise RequestValidationError([{**e, "loc": ("query", "q")} for e in exc.errors()]) from None
        outcome = await answer([q], body.top_k, body.return_text, None, response, body.mode)
        return SearchResponse(
            query=q,
            hits=hits_of(outcome.hits[0]),
            index_version=outcome.index_version,
            model=outcome.model,
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    @app.post(
        "/admin/reload",
        response_model=ReloadResponse,
        summary="Load the index version CURRENT names, check it, swap it in",
        dependencies=[Depends(require_admin)],
        responses=_errors(401, 403, 409),
    )
    async def reload() -> ReloadResponse:
        return await runtime.manager.reload()

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
