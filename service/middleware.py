"""The request middleware (request id, body-size limit, crash guard, metrics, one JSON log line
with a search's queue / encode / search milliseconds,
``X-Content-Type-Options: nosniff`` on every response) and the early admission of searches.

A plain ASGI middleware (no ``BaseHTTPMiddleware``: it would add a task and a copy per
request). It sits inside Starlette's error middleware and outside the routing, so it sees
every request, including those that fail validation or crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, response_for
from .metrics import ServiceMetrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("md2pr.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_TIMING = re.compile(r"\s*([A-Za-z0-9_\-]+);dur=([0-9]+(?:\.[0-9]+)?)\s*")
#: ``scope["state"]`` key: the path of a request answered before routing (its metrics label).
UNROUTED = "unrouted_path"


def setup_access_log() -> None:
    """Send access lines, one JSON object each, to stderr unless logging already routes them.

    The app factory is the entry point under ``uvicorn --factory``, where nothing else
    configures this logger; a deployment that does (a handler on ``md2pr.access``) keeps its own.
    """
    if access_logger.level == logging.NOTSET:
        access_logger.setLevel(logging.INFO)
    if access_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.propagate = False  # the line is the whole record: no second, prefixed copy


def server_timing(header: str) -> dict[str, float]:
    """The ``name;dur=ms`` entries of a ``Server-Timing`` header value (others skipped), in ms."""
    matches = (_TIMING.fullmatch(entry) for entry in header.split(","))
    return {m.group(1): float(m.group(2)) for m in matches if m}


class RequestMiddleware:
    """Per request: an id (``X-Request-ID``, echoed back), the body limit, metrics and the log line."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        response_started = False
        timing = b""  # the response's Server-Timing, parsed only for the log line

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started, timing
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                response_headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                names = {name.lower(): value for name, value in response_headers}
                timing = names.get(b"server-timing", b"")
                if b"x-content-type-options" not in names:
                    # Every answer is what its Content-Type says (JSON, Prometheus text, the page):
                    # browsers must not sniff a JSON body that echoes a query into HTML.
                    response_headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = response_headers
            await send(message)

        try:
            body_receive = await self._read_body(scope, receive, headers)
            await self.app(scope, body_receive, send_with_id)
        except PayloadTooLarge as exc:
            await response_for(exc)(scope, receive, send_with_id)
        except Exception as exc:
            logger.error(
                "request %s %s failed (request id %s)", scope["method"], scope["path"], request_id, exc_info=exc
            )
            if not response_started:
                await response_for(exc, request_id)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or scope.get("state", {}).get(UNROUTED) or "unmatched"
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.request_latency.labels(route=route).observe(elapsed)
            if self.access_log:
                line = {
                    "ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                }
                if timing:  # a search's own Server-Timing: where its latency went
                    line["timing_ms"] = server_timing(timing.decode("latin-1"))
                access_logger.info(json.dumps(line))

    async def _read_body(self, scope: Scope, receive: Receive, headers: dict[bytes, bytes]) -> Receive:
        """Read the whole body up to the limit (a larger one is refused unread) and replay it."""
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False  # the server rejects a malformed length itself
            if too_large:
                raise PayloadTooLarge(f"request body over {limit} bytes", {"limit_bytes": limit})
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and declared is None:
            return receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                replay = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body over {limit} bytes", {"limit_bytes": limit})
            chunks.append(chunk)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay_receive() -> Message:
            return replay.pop(0) if replay else await receive()

        return replay_receive


class AdmissionMiddleware:
    """Refuse a search before it is parsed when even a one-query search would wait too long.

    ``refusal`` (the batcher's :meth:`~service.batching.MicroBatcher.wait_refusal`) is asked for
    every ``GET``/``POST`` of ``paths``; an exception it returns is the answer (a 429 with
    Retry-After). Under overload most requests are refused, and this way a refusal costs no
    JSON parsing, validation or routing: the event loop's time goes to the accepted ones. It
    sits inside CORS (a refused browser request still carries its CORS headers) and inside
    :class:`RequestMiddleware` (counted and logged like any other answer). A request that passes
    is checked again, with its real number of queries, when it is queued.

    Retry-After is enforced per connection while the overload lasts: a search refused on a
    connection (client host and port) that was told less than its Retry-After ago to come back
    later gets its 429 only when that Retry-After ends. A client that honours Retry-After never
    waits here, nor does anyone once the service has room again; clients that retry at once (a
    retry storm) each cost the event loop at most one refusal per Retry-After instead of
    thousands a second, the flood that on 2 cores took the accepted requests' time
    (benchmarks/RESULTS.md, admission). The refusal is not reconsidered after the hold, so
    accepted requests never carry a hold in their latency. The memory holds one deadline per
    recently refused connection, at most ``max_tracked``.
    """

    def __init__(
        self,
        app: ASGIApp,
        refusal: Callable[[], Exception | None],
        paths: frozenset[str],
        max_tracked: int = 65536,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.app = app
        self.refusal = refusal
        self.paths = paths
        self.max_tracked = max_tracked
        self._clock = clock
        self._sleep = sleep
        # connection (host, port) -> clock time before which it was told not to come back
        # (an OrderedDict: popping its oldest entry is O(1), a plain dict's is not)
        self._refused_until: OrderedDict[tuple[str, int], float] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and scope["method"] in ("GET", "POST"):
            refused = self.refusal()
            if refused is not None:
                client = scope.get("client")
                key = (str(client[0]), int(client[1])) if client else None
                until = self._refused_until.get(key) if key is not None else None
                if until is not None and until > self._clock():
                    await self._sleep(until - self._clock())  # back before its Retry-After: answer when it ends
                if key is not None:
                    self._remember(key, refused)
                scope.setdefault("state", {})[UNROUTED] = scope["path"]
                await response_for(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _remember(self, key: tuple[str, int], refused: Exception) -> None:
        """Note the Retry-After the connection ``key`` is about to be given (forgetting expired ones)."""
        try:
            retry_after = float(getattr(refused, "headers", {}).get("Retry-After", 0))
        except ValueError:
            return
        if retry_after <= 0:
            return
        now = self._clock()
        # Oldest first (a connection refused again moves to the end), so expired deadlines leave
        # from the front: O(1) amortised a refusal. One that outlives those behind it (Retry-After
        # varies, at most a few seconds) keeps them a little longer; they are expired, never obeyed.
        while self._refused_until and next(iter(self._refused_until.values())) <= now:
            self._refused_until.popitem(last=False)
        self._refused_until.pop(key, None)
        if len(self._refused_until) >= self.max_tracked:
            return  # every tracked connection is still within its Retry-After: track no more
        self._refused_until[key] = now + retry_after
