"""The HTTP routes (one :class:`fastapi.APIRouter`); each gets the app's runtime through
:data:`service.runtime.Runtime` (a dependency), and its documented errors from
:data:`service.errors.ERRORS`."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.security import APIKeyHeader

from retrieval.errors import InvalidValueError
from retrieval.retriever import Hit

from .batching import SearchOutcome
from .errors import Forbidden, InvalidSearchMode, PayloadTooLarge, Unauthorized, openapi_responses
from .metrics import CONTENT_TYPE
from .runtime import Runtime, ServiceRuntime
from .schemas import (
    BatchSearchResponse,
    HealthResponse,
    InfoResponse,
    QueryResult,
    ReadyResponse,
    ReloadResponse,
    SearchHit,
    SearchQueryParams,
    SearchRequest,
    SearchResponse,
)
from .state import index_info

STATIC_DIR = Path(__file__).resolve().parent / "static"

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="the value of MD2PR_ADMIN_API_KEY")

router = APIRouter()


async def require_admin(runtime: Runtime, key: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
    """Admin routes: the configured key, compared in constant time; none configured means disabled."""
    configured = runtime.settings.admin_api_key
    if configured is None or not configured.get_secret_value():
        raise Forbidden("admin routes are disabled: the service has no MD2PR_ADMIN_API_KEY")
    if not key:
        raise Unauthorized("admin routes need the X-API-Key header")
    if not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), configured.get_secret_value().encode("utf-8")):
        raise Forbidden("wrong API key")


async def single_valued_query(request: Request) -> None:
    """Refuse a query-string parameter given more than once (422, as a schema violation).

    (``async``, as every dependency here: a plain ``def`` one would cost a thread-pool hop.)

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


@functools.cache
def page_and_policy() -> tuple[str, str]:
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


@router.get("/", include_in_schema=False)
async def search_page() -> HTMLResponse:
    page, policy = page_and_policy()
    return HTMLResponse(page, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff"})


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process serves HTTP")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: an index and its encoder are loaded",
    responses=openapi_responses(503),
)
async def readyz(runtime: Runtime) -> ReadyResponse:
    return ReadyResponse(index_version=runtime.holder.require().version)


@router.get(
    "/info",
    response_model=InfoResponse,
    summary="The served model, index version and settings",
    responses=openapi_responses(503),
)
async def info(runtime: Runtime) -> InfoResponse:
    served = runtime.holder.require()
    encoder = served.retriever.encoder
    settings = runtime.settings
    return InfoResponse.model_validate(
        {
            "model": {
                "fingerprint": encoder.fingerprint,
                "source": encoder.source,
                "dimension": encoder.dimension,
                "pooling": encoder.config.pooling,
                "normalize": encoder.config.normalize,
                "max_query_length": encoder.config.max_query_length,
                "backend": served.backend,
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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}, "description": "text format"}
    },
)
async def metrics(runtime: Runtime) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


async def answer(
    runtime: ServiceRuntime,
    texts: list[str],
    top_k: int,
    return_text: bool,
    params: dict[str, int] | None,
    response: Response,
    mode: str = "dense",
    fusion: dict[str, Any] | None = None,
) -> SearchOutcome:
    """Check what the served version can answer, queue the search, and time it in ``Server-Timing``."""
    settings = runtime.settings
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


def hits_of(hits: list[Hit], include_scores: bool = False) -> list[SearchHit]:
    """The wire form of one query's hits (component scores only when asked for)."""
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


SEARCH_ERRORS = openapi_responses(413, 422, 429, 503, 504)


@router.post(
    "/search",
    response_model=SearchResponse | BatchSearchResponse,
    response_model_exclude_none=True,
    summary="Search (dense, BM25 or hybrid) for one query or a batch",
    responses={**SEARCH_ERRORS, **openapi_responses(400)},
)
async def search(body: SearchRequest, response: Response, runtime: Runtime) -> SearchResponse | BatchSearchResponse:
    started = time.perf_counter()
    texts = body.texts
    params = body.search_params.as_mapping() if body.search_params else None
    fusion = body.fusion.as_overrides() if body.fusion else None
    outcome = await answer(runtime, texts, body.top_k, body.return_text, params, response, body.mode, fusion)
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


@router.get(
    "/search",
    response_model=SearchResponse,
    response_model_exclude_none=True,
    summary="Search for one query (quick use: /search?q=...&mode=hybrid)",
    description="Each parameter at most once (a repeated one is 422), no unknown ones; `top_k` in decimal digits.",
    responses=SEARCH_ERRORS,
    dependencies=[Depends(single_valued_query)],
)
async def search_get(
    query: Annotated[SearchQueryParams, Query()], response: Response, runtime: Runtime
) -> SearchResponse:
    started = time.perf_counter()
    outcome = await answer(runtime, [query.q], query.top_k, query.return_text, None, response, query.mode)
    return SearchResponse(
        query=query.q,
        hits=hits_of(outcome.hits[0]),
        index_version=outcome.index_version,
        model=outcome.model,
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    summary="Load the index version CURRENT names, check it, swap it in",
    dependencies=[Depends(require_admin)],
    responses=openapi_responses(401, 403, 409),
)
async def reload(runtime: Runtime) -> ReloadResponse:
    return await runtime.manager.reload()
