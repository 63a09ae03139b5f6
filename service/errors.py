"""One error body shape for every failure, and the one place exceptions become HTTP codes.

Body: ``{"error": "<one readable sentence>", "type": "<machine-readable kind>", "detail": <any>}``.

:data:`ERRORS` is the one table of what the service answers when: the exception classes take
their status and type from it, the routes' OpenAPI ``responses`` are built from it
(:func:`openapi_responses`), and the README's table is its rendering (:func:`markdown_table`; a
test keeps them equal; ``python -m service.errors`` prints it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

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
        ..., description="machine-readable kind (service.errors.ERRORS; the README's table)", examples=["validation_error"]
    )
    detail: object | None = Field(None, description="structured detail: validation errors, request id, ...")


# ------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ErrorKind:
    """One row of :data:`ERRORS`: an HTTP status, the body's ``type``, and when it is answered
    (Markdown: the README's table and the OpenAPI descriptions show it as written)."""

    status: int
    type: str
    when: str


NOT_UTF8 = ErrorKind(400, "http_error", "the body could not be read as text (not UTF-8)")
BAD_REQUEST = ErrorKind(400, "bad_request", "any other request the retrieval library refuses (the message says why)")
UNAUTHORIZED = ErrorKind(401, "unauthorized", "admin route without the `X-API-Key` header")
FORBIDDEN = ErrorKind(403, "forbidden", "admin route with a wrong key, or admin routes disabled (no `MD2PR_ADMIN_API_KEY`)")
NOT_FOUND = ErrorKind(404, "http_error", "unknown route")
METHOD_NOT_ALLOWED = ErrorKind(405, "http_error", "a method the path lacks; `Allow` lists every method it has")
RELOAD_REFUSED = ErrorKind(
    409,
    "reload_refused",
    "a new index version failed its checks; the old one keeps serving (the message gives the cause, e.g. FAISS's, "
    "without FAISS's source paths)",
)
PAYLOAD_TOO_LARGE = ErrorKind(
    413, "payload_too_large", "body over `MD2PR_MAX_BODY_BYTES`, or more queries than `MD2PR_MAX_QUERIES_PER_REQUEST`"
)
VALIDATION_ERROR = ErrorKind(
    422, "validation_error", "the body or query string breaks the input rules (the message names each field)"
)
INVALID_SEARCH_PARAMS = ErrorKind(422, "invalid_search_params", "`search_params` the served index family lacks")
INVALID_SEARCH_MODE = ErrorKind(
    422, "invalid_search_mode", "a `mode` the served version lacks, or `fusion` settings out of bounds"
)
OVERLOADED = ErrorKind(
    429,
    "overloaded",
    "the queue holds `MD2PR_QUEUE_MAX_QUERIES` queries, or the search would wait longer than "
    "`MD2PR_MAX_QUEUE_WAIT_MS` for the model; `Retry-After` says when to come back",
)
INTERNAL_ERROR = ErrorKind(
    500, "internal_error", "a bug: `detail.request_id` matches the traceback in the log (never in the body)"
)
NOT_READY = ErrorKind(
    503, "not_ready", "the index and encoder are still loading, or loading failed (the message says why)"
)
INDEX_UNAVAILABLE = ErrorKind(503, "index_unavailable", "an index artifact broke while serving")
TIMEOUT = ErrorKind(504, "timeout", "no answer within `MD2PR_REQUEST_TIMEOUT_S`")

#: Every error the service answers, by status: the one source of the README's table and OpenAPI's.
ERRORS: tuple[ErrorKind, ...] = (
    NOT_UTF8,
    BAD_REQUEST,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    RELOAD_REFUSED,
    PAYLOAD_TOO_LARGE,
    VALIDATION_ERROR,
    INVALID_SEARCH_PARAMS,
    INVALID_SEARCH_MODE,
    OVERLOADED,
    INTERNAL_ERROR,
    NOT_READY,
    INDEX_UNAVAILABLE,
    TIMEOUT,
)


def markdown_table() -> str:
    """:data:`ERRORS` as the README's Markdown table (one row per status and type)."""
    rows = ["| code | `type` | when |", "|---|---|---|"]
    rows += [f"| {e.status} | `{e.type}` | {e.when} |" for e in ERRORS]
    return "\n".join(rows)


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can answer ``statuses``: the error body, and
    each status's rows of :data:`ERRORS` as its description."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        kinds = [e for e in ERRORS if e.status == status]
        if not kinds:
            raise ValueError(f"status {status} is not in service.errors.ERRORS")
        description = "; ".join(f"`{e.type}`: {e.when}" for e in kinds)
        responses[status] = {"model": ErrorBody, "description": description}
    return responses


# ------------------------------------------------------------------------------ the hierarchy
class ServiceError(Exception):
    """Base of errors the service raises on purpose; each subclass names its row of :data:`ERRORS`."""

    error: ErrorKind = INTERNAL_ERROR

    def __init__(self, message: str, detail: object = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    @property
    def status(self) -> int:
        """The HTTP status (from :attr:`error`)."""
        return self.error.status

    @property
    def kind(self) -> str:
        """The body's ``type`` (from :attr:`error`)."""
        return self.error.type


class Unauthorized(ServiceError):
    error = UNAUTHORIZED

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'APIKey header="X-API-Key"'})


class Forbidden(ServiceError):
    error = FORBIDDEN


class ReloadRefused(ServiceError):
    error = RELOAD_REFUSED


class PayloadTooLarge(ServiceError):
    error = PAYLOAD_TOO_LARGE


class InvalidSearchParams(ServiceError):
    error = INVALID_SEARCH_PARAMS


class InvalidSearchMode(ServiceError):
    """A mode the served version lacks, or fusion settings out of bounds once merged with its defaults."""

    error = INVALID_SEARCH_MODE


class Overloaded(ServiceError):
    error = OVERLOADED

    def __init__(self, message: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(message, {"retry_after_s": seconds}, {"Retry-After": str(seconds)})


class NotReady(ServiceError):
    error = NOT_READY

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message, detail, {"Retry-After": "1"})


class RequestTimeout(ServiceError):
    error = TIMEOUT


# ------------------------------------------------------------------------------- the mapping
def error_response(
    kind: ErrorKind, error: str, detail: object = None, headers: dict[str, str] | None = None, status: int | None = None
) -> JSONResponse:
    """The single constructor of error bodies: ``kind``'s status (or ``status``, for Starlette's own
    HTTP errors, whose codes vary) and type, the sentence ``error``, and ``detail``."""
    return JSONResponse(
        status_code=status or kind.status, content={"error": error, "type": kind.type, "detail": detail}, headers=headers
    )


def internal_error_response(request_id: str) -> JSONResponse:
    """500 for a crash: the client gets the request id, the log gets the traceback."""
    return error_response(INTERNAL_ERROR, "internal error; quote the request id when reporting it", {"request_id": request_id})


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
        return error_response(exc.error, exc.message, exc.detail, exc.headers)
    if isinstance(exc, RequestValidationError):
        not_json = _json_error_message(exc)
        if not_json is not None:
            position = exc.errors()[0].get("loc", ("body",))[1:]
            return error_response(
                VALIDATION_ERROR, not_json, [{"loc": ["body", *map(_json_safe, position)], "msg": not_json}]
            )
        errors = [
            {"loc": [_json_safe(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        message = "; ".join(_describe(e) for e in exc.errors()) or "invalid request"
        return error_response(VALIDATION_ERROR, message, errors)
    if isinstance(exc, StarletteHTTPException):
        # Starlette's own (400 not UTF-8, 404, 405, ...): its row of the table, its status in any case
        kind = next((e for e in ERRORS if e.status == exc.status_code and e.type == "http_error"), NOT_FOUND)
        return error_response(kind, str(exc.detail), headers=getattr(exc, "headers", None), status=exc.status_code)
    if isinstance(exc, ArtifactError):
        logger.error("artifact error while serving: %s", exc)
        return error_response(INDEX_UNAVAILABLE, str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, RetrievalError):
        return error_response(BAD_REQUEST, str(exc))
    return internal_error_response(request_id or "unknown")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` answers at the request's path, sorted (the ``Allow`` of a 405).

    Starlette's router answers a wrong method with the ``Allow`` of the first route whose path
    matched, so a path served by two routes (``GET /search`` and ``POST /search``) advertised only
    one of them.
    """
    methods: set[str] = set()

    def visit(routes: list) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:  # FastAPI >= 0.16x keeps an included APIRouter as one lazy entry
                visit(included.routes)
                continue
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                methods.update(getattr(route, "methods", None) or ())

    visit(app.router.routes)
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


if __name__ == "__main__":  # python -m service.errors: the README's table
    print(markdown_table())
