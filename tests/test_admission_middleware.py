"""Early admission (service.middleware.AdmissionMiddleware): Retry-After enforced per connection.

Driven at the ASGI level with a fake clock and a recording sleep: nothing here waits or times.
"""

from __future__ import annotations

import asyncio
import json

from service.errors import Overloaded
from service.middleware import AdmissionMiddleware


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


class App:
    """The inner app: answers 200 and counts the requests that reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _request(middleware: AdmissionMiddleware, client: tuple[str, int] | None, path: str = "/search") -> tuple[int, dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b"", "client": client}
    asyncio.run(middleware(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers


counted: list[int] = []  # refusals counted as final answers (the batcher's metric)


def _middleware(overloaded: list[bool], clock: Clock, app: App | None = None, **kwargs) -> AdmissionMiddleware:
    counted.clear()
    def refusal() -> Exception | None:
        if overloaded[0]:
            counted.append(1)
        return Overloaded("overloaded: retry later", 2.0) if overloaded[0] else None

    return AdmissionMiddleware(app or App(), refusal, frozenset({"/search"}), clock=clock, sleep=clock.sleep, **kwargs)


def test_a_first_refusal_is_immediate_and_an_early_retry_on_that_connection_is_held_until_retry_after() -> None:
    clock, overloaded = Clock(), [True]
    middleware = _middleware(overloaded, clock)
    status, headers = _request(middleware, ("10.0.0.1", 5000))
    assert (status, headers["retry-after"], clock.slept) == (429, "2", [])  # told at once
    clock.now += 0.5  # back after 0.5 s of its 2 s
    status, _ = _request(middleware, ("10.0.0.1", 5000))
    assert status == 429 and clock.slept == [1.5]  # held for the rest of its Retry-After, then refused
    status, _ = _request(middleware, ("10.0.0.2", 5000))  # another connection: its first refusal, at once
    assert status == 429 and clock.slept == [1.5]
    clock.now += 2.5  # a client that waited its Retry-After is never held
    assert _request(middleware, ("10.0.0.1", 5000))[0] == 429 and clock.slept == [1.5]
    assert len(counted) == 4  # four refused requests, each asked (and counted) once


def test_an_early_retry_is_not_held_once_the_service_has_room_and_a_hold_never_reaches_the_app() -> None:
    clock, overloaded, app = Clock(), [True], App()
    middleware = _middleware(overloaded, clock, app)
    assert _request(middleware, ("10.0.0.1", 5000))[0] == 429
    assert _request(middleware, ("10.0.0.1", 5000))[0] == 429 and app.calls == 0  # held, then refused, not served
    assert clock.slept == [2.0] and len(counted) == 2
    overloaded[0] = False  # room again: the same connection, back at once, is served at once
    assert _request(middleware, ("10.0.0.1", 5000))[0] == 200 and app.calls == 1 and clock.slept == [2.0]


def test_other_paths_and_clientless_scopes_are_not_held_and_the_memory_is_bounded() -> None:
    clock, overloaded, app = Clock(), [True], App()
    middleware = _middleware(overloaded, clock, app, max_tracked=4)
    assert _request(middleware, ("10.0.0.1", 1), path="/healthz")[0] == 200  # not a search path
    for _ in range(2):
        assert _request(middleware, None)[0] == 429  # no client address: nothing to key on, never held
    assert clock.slept == []
    for port in range(10):
        assert _request(middleware, ("10.0.0.9", port))[0] == 429
    assert len(middleware._refused_until) == 4  # full of live deadlines: the rest are not tracked
    clock.now += 10  # every deadline expired: swept on the next refusal
    assert _request(middleware, ("10.0.0.9", 99))[0] == 429
    assert list(middleware._refused_until) == [("10.0.0.9", 99)]


def test_the_refusal_body_is_the_usual_error_shape() -> None:
    clock = Clock()
    sent: list[dict] = []
    middleware = _middleware([True], clock)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/search", "headers": [], "query_string": b"", "client": ("h", 1)}
    asyncio.run(middleware(scope, receive, send))
    body = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])
    assert body["type"] == "overloaded" and body["detail"] == {"retry_after_s": 2}
