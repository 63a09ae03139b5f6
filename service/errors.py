"""One error body shape for every failure, and the one place exceptions become HTTP codes.

Body: ``{"error": "<one readable sentence>", "type": "<machine-readable kind>", "detail": <any>}``.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.errors import ArtifactError, RetrievalError

logger = logging.getLogger(__name__)


def error_response(status: int, error: str, kind: str, detail: object = None) -> JSONResponse:
    """The single constructor of error bodies."""
    return JSONResponse(status_code=status, content={"error": error, "type": kind, "detail": detail})


def _describe(err: dict) -> str:
    location = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{location}: {message}"


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, HTTP errors, library errors and crashes to the error body."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error_response(422, "; ".join(_describe(e) for e in exc.errors()), "validation_error", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "http_error")

    @app.exception_handler(ArtifactError)
    async def _artifact(_: Request, exc: ArtifactError) -> JSONResponse:
        logger.error("artifact error: %s", exc)
        return error_response(503, str(exc), "index_unavailable")

    @app.exception_handler(RetrievalError)
    async def _retrieval(_: Request, exc: RetrievalError) -> JSONResponse:
        return error_response(400, str(exc), "bad_request")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex
        logger.exception("request %s %s failed (request id %s)", request.method, request.url.path, request_id)
        return error_response(500, "internal error", "internal_error", {"request_id": request_id})
