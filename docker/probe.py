#!/usr/bin/env python3
"""Readiness probe and fleet reload for the MD2PR containers (standard library only).

The image's ``HEALTHCHECK`` and the compose ``reload`` job run this through
``docker/entrypoint.sh``; the tests run the very same file outside Docker. It imports
nothing from the project on purpose: a health check runs every few seconds, and importing
torch would cost seconds of CPU each time.

Usage::

    probe.py ready  [--url URL]                 exit 0 when the service at URL can search, 1 when not
    probe.py wait   [--url URL] [--timeout S]   poll ``ready`` until it passes (0) or S seconds pass (1)
    probe.py reload [--target HOST:PORT ...]    POST /admin/reload to every address each HOST resolves to

``URL`` defaults to ``http://127.0.0.1:$MD2PR_PORT`` (port 8000). ``reload`` targets default to
``$MD2PR_RELOAD_TARGETS`` (comma-separated, default ``service:8000``) and send the admin key
from ``$MD2PR_ADMIN_API_KEY`` in the ``X-API-Key`` header. Inside a compose network a service
name resolves to the address of every replica, so one ``reload`` reaches the whole fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

READY_PATH = "/readyz"
RELOAD_PATH = "/admin/reload"
API_KEY_HEADER = "X-API-Key"


def default_url() -> str:
    """The service inside this container (or on this host): loopback and ``$MD2PR_PORT``."""
    return f"http://127.0.0.1:{os.environ.get('MD2PR_PORT', '8000')}"


def _request(url: str, timeout: float, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    """``(status, body)`` of one request; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _short(body: str, limit: int = 300) -> str:
    """A response body on one line (compact JSON when it is JSON), cut to ``limit`` characters."""
    try:
        body = json.dumps(json.loads(body), separators=(",", ":"))
    except ValueError:
        body = " ".join(body.split())
    return body if len(body) <= limit else body[: limit - 3] + "..."


def check_ready(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the service at ``url`` answers searches (``GET /readyz`` is 200), and a one-line reason.

    ``/readyz`` says 503 until the encoder and the index are loaded; ``/healthz`` would
    answer as soon as the process serves HTTP, which is too early for a load balancer.
    """
    url = url.rstrip("/")
    try:
        status, body = _request(url + READY_PATH, timeout)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not ready: {url} unreachable ({reason})"
    if status == 200:
        return True, "ready"
    return False, f"not ready: HTTP {status} {_short(body)}"


def wait_ready(url: str, timeout: float, interval: float = 1.0) -> tuple[bool, str]:
    """Poll :func:`check_ready` until it passes or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        ok, message = check_ready(url, timeout=min(3.0, max(timeout, 0.1)))
        if ok or time.monotonic() >= deadline:
            return ok, message
        time.sleep(interval)


def resolve(target: str) -> tuple[str, int, list[str]]:
    """Split ``HOST:PORT`` and resolve HOST to all its addresses (one per replica in compose), sorted."""
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"reload target {target!r} is not HOST:PORT")
    port = int(port_text)
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return host, port, sorted({info[4][0] for info in infos})


def reload_fleet(targets: list[str], api_key: str, timeout: float = 120.0) -> int:
    """POST ``/admin/reload`` to every replica behind ``targets``, one at a time; returns the exit code.

    Replicas are reloaded in turn and the run stops at the first refusal: a replica refuses a
    broken or mismatched version and keeps serving the old one, so stopping there leaves the
    rest of the fleet on the version it already serves instead of repeating the refusal.
    """
    done = 0
    for target in targets:
        try:
            host, port, addresses = resolve(target)
        except (OSError, ValueError) as exc:
            print(f"reload: cannot resolve {target}: {exc}", file=sys.stderr)
            return 1
        for address in addresses:
            netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            label = f"{host} {netloc}"
            try:
                status, body = _request(
                    f"http://{netloc}{RELOAD_PATH}", timeout, method="POST", headers={API_KEY_HEADER: api_key}
                )
            except (OSError, urllib.error.URLError) as exc:
                status, body = 0, str(getattr(exc, "reason", exc))
            print(f"{label}: HTTP {status or 'error'} {_short(body)}")
            if not 200 <= status < 300:
                print(
                    f"reload: stopped at {label}; {done} replica(s) reloaded before it, "
                    "the others still serve their previous version",
                    file=sys.stderr,
                )
                return 1
            done += 1
    print(f"reload: {done} replica(s) reloaded")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("ready", "wait"):
        sub = commands.add_parser(name)
        sub.add_argument("--url", default=default_url(), help="service base URL (default: %(default)s)")
        sub.add_argument("--timeout", type=float, default=3.0 if name == "ready" else 300.0, help="seconds")
    sub = commands.add_parser("reload")
    sub.add_argument(
        "--target",
        action="append",
        help="HOST:PORT of the replicas, repeatable (default: $MD2PR_RELOAD_TARGETS or service:8000)",
    )
    sub.add_argument("--timeout", type=float, default=120.0, help="seconds per replica (loading a version takes a while)")
    args = parser.parse_args(argv)

    if args.command in ("ready", "wait"):
        ok, message = check_ready(args.url, args.timeout) if args.command == "ready" else wait_ready(args.url, args.timeout)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1

    api_key = os.environ.get("MD2PR_ADMIN_API_KEY", "")
    if not api_key:
        print("reload: MD2PR_ADMIN_API_KEY is not set (the key the service's /admin/reload requires)", file=sys.stderr)
        return 2
    targets = args.target or [t.strip() for t in os.environ.get("MD2PR_RELOAD_TARGETS", "service:8000").split(",") if t.strip()]
    return reload_fleet(targets, api_key, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
