"""One error body shape for every failure, and the one place exceptions become HTTP codes.

Body: ``{"error": "<one readable sentence>", "type": "<machine-readable kind>", "detail": <any>}``.

=====  ======================  =========================================================
code   type                    raised by
=====  ======================  =========================================================
400    http_error              a body that is not UTF-8 text (FastAPI's parser)
400    bad_request             any other :class:`~retrieval.errors.RetrievalError`
401    unauthorized            admin route without ``X-API-Key``
403    forbidden               admin route with a wrong key, or no key configured
404    http_error              unknown route (and other Starlette HTTP errors)
405    http_error              a method the path lacks (``Allow`` lists every method it has)
409    reload_refused          a new index version failed its checks; the old one serves on
413    payload_too_large       body over ``max_body_bytes``; more queries than allowed
422    validation_error        a request that does not match the schema
422    invalid_search_params   ``search_params`` the served index family does not support
429    overloaded              the query queue is full (with ``Retry-After``)
500    internal_error          a bug: the body has a request id, the traceback is logged
503    not_ready               no index loaded yet (or loading failed)
503    index_unavailable       an index artifact broke while serving
504    timeout                 no answer within ``request_timeout_s``
=====  ======================  =========================================================
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from retrieval.errors import ArtifactError, RetrievalError

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(
        ..., description="one readable sentence", examples=["top_k: Input should be less than or equal to 100"]
    )
    type: str = Field(
        ..., description="machine-readable kind (see the table in service/errors.py)", examples=["validation_error"]
    )
    detail: object | None = Field(None, description="structured detail: validation errors, request id, ...")


# ------------------------------------------------------------------------------ the hierarchy
class ServiceError(Exception):
    """Base of errors the service raises on purpose; each subclass fixes its status and type."""

    status: int = 500
    kind: str = "internal_error"

    def __init__(self, message: str, detail: object = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class Unauthorized(ServiceError):
    status, kind = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'APIKey header="X-API-Key"'})


class Forbidden(ServiceError):
    status, kind = 403, "forbidden"


class ReloadRefused(ServiceError):
    status, kind = 409, "reload_refused"


class PayloadTooLarge(ServiceError):
    status, kind = 413, "payload_too_large"


class InvalidSearchParams(ServiceError):
    status, kind = 422, "invalid_search_params"


class InvalidSearchMode(ServiceError):
    """A mode the served version lacks, or fusion settings out of bounds once merged with its defaults."""

    status, kind = 422, "invalid_search_mode"


class Overloaded(ServiceError):
    status, kind = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(message, {"retry_after_s": seconds}, {"Retry-After": str(seconds)})


class NotReady(ServiceError):
    status, kind = 503, "not_ready"

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message, detail, {"Retry-After": "1"})


class RequestTimeout(ServiceError):
    status, kind = 504, "timeout"


# ------------------------------------------------------------------------------- the mapping
def error_response(
    status: int, error: str, kind: str, detail: object = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The single constructor of error bodies."""
    return JSONResponse(status_code=status, content={"error": error, "type": kind, "detail": detail}, headers=headers)


def internal_error_response(request_id: str) -> JSONResponse:
    """500 for a crash: the client gets the request id, the log gets the traceback."""
    return error_response(
        500, "internal error; quote the request id when reporting it", "internal_error", {"request_id": request_id}
    )


def _describe(err: dict) -> str:
    loc = list(err.get("loc", ()))
    if len(loc) > 1 and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]  # ("body", "top_k") -> "top_k"; ("query", "q") -> "q"
    location = ".".join(str(x) for x in loc)
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{location}: {message}"


def _json_error_message(exc: RequestValidationError) -> str | None:
    """The message for a body that is not JSON, in the words of Python's JSON parser, or ``None``.

    FastAPI reports it as ``{"type": "json_invalid", "loc": ("body", <char offset>), "ctx":
    {"error": <parser message>}}`` with the document as ``exc.body``; the line and column are
    computed as :class:`json.JSONDecodeError` computes them (1-based).
    """
    errors = exc.errors()
    if len(errors) != 1 or errors[0].get("type") != "json_invalid":
        return None
    reason = str((errors[0].get("ctx") or {}).get("error") or "not valid JSON")
    loc = list(errors[0].get("loc", ()))
    document = exc.body
    if len(loc) == 2 and isinstance(loc[1], int) and isinstance(document, str):
        position = loc[1]
        line = document.count("\n", 0, position) + 1
        column = position - document.rfind("\n", 0, position)
        return f"body is not valid JSON: {reason} at line {line} column {column}"
    return f"body is not valid JSON: {reason}"


def _json_safe(value: object) -> object:
    """Validation errors may carry the offending input; keep only what JSON can hold."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def response_for(exc: Exception, request_id: str | None = None) -> JSONResponse:
    """Map any exception to its error response (the one mapping of the service)."""
    if isinstance(exc, ServiceError):
        return error_response(exc.status, exc.message, exc.kind, exc.detail, exc.headers)
    if isinstance(exc, RequestValidationError):
        not_json = _json_error_message(exc)
        if not_json is not None:
            position = exc.errors()[0].get("loc", ("body",))[1:]
            return error_response(
                422, not_json, "validation_error", [{"loc": ["body", *map(_json_safe, position)], "msg": not_json}]
            )
        errors = [
            {"loc": [_json_safe(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        message = "; ".join(_describe(e) for e in exc.errors()) or "invalid request"
        return error_response(422, message, "validation_error", errors)
    if isinstance(exc, StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "http_error", headers=getattr(exc, "headers", None))
    if isinstance(exc, ArtifactError):
        logger.error("artifact error while serving: %s", exc)
        return error_response(503, str(exc), "index_unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, RetrievalError):
        return error_response(400, str(exc), "bad_request")
    return internal_error_response(request_id or "unknown")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` answers at the request's path, sorted (the ``Allow`` of a 405).

    Starlette's router answers a wrong method with the ``Allow`` of the first route whose path
    matched, so a path served by two routes (``GET /search`` and ``POST /search``) advertised only
    one of them.
    """
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Route handled exception types through :func:`response_for`.

    Uncaught exceptions are turned into 500s by the request middleware (which knows the
    request id and logs the traceback); the handler for ``Exception`` here is a last resort.
    """

    async def _handle(request: Request, exc: Exception) -> JSONResponse:
        response = response_for(exc, getattr(request.state, "request_id", None))
        if response.status_code == 405 and isinstance(exc, StarletteHTTPException):
            methods = allowed_methods(request.app, request.scope)
            if methods:
                response.headers["Allow"] = ", ".join(methods)
        return response

    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, RetrievalError):
        app.add_exception_handler(kind, _handle)

    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "unknown")
        logger.error("request %s %s failed (request id %s)", request.method, request.url.path, request_id, exc_info=exc)
        return internal_error_response(request_id)

    app.add_exception_handler(Exception, _crash)
