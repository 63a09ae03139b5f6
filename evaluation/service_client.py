"""Rankings from a running md2pr service over HTTP, for evaluation (``md2pr-evaluate --retriever service``).

The service is the deployed system an operator wants to check; this client asks it the
dataset's queries exactly as any caller would (``POST /search``) and returns the same
rankings shape as in-process retrieval, so :func:`retrieval.metrics.evaluate_run` scores both
the same way.

Protocol used (the service's API; its bodies and limits are :mod:`retrieval.wire`, the one
definition the service publishes too, so nothing here is a copy of the service's numbers):

- ``GET /readyz``: 200 once an index is loaded, 503 while loading. Polled until ready or
  ``ready_timeout_s``.
- ``GET /info``: ``{"model": {"fingerprint", "source", ...}, "index": {"version", "family",
  "count", "modes", ...}, "serving": {"max_queries_per_request", ...}}``.
- ``POST /search`` with ``{"queries": [...], "top_k": k, "mode": m, "return_text": false}``
  answers ``{"results": [{"query", "hits": [{"docid", "score", "rank"}]}], "index_version",
  "model", "took_ms"}``, results in request order. ``top_k`` is at most
  :data:`retrieval.wire.MAX_TOP_K`; the answer is a :class:`retrieval.wire.BatchSearchResponse`.
  429 (queue full) carries ``Retry-After`` seconds.
- Every error body is ``{"error": "<one sentence>", "type": ..., "detail": ...}``.

Failures are :class:`~retrieval.errors.RetrievalError` with one readable line (the CLIs
print it and exit 2): an unreachable service, a non-2xx answer (status and the service's
``error``), a service that stays unready or overloaded, and an index version that changes
during the run (a swap mid-evaluation would score a mix of two indexes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, get_args

import httpx
import tenacity
from pydantic import ValidationError

from retrieval.errors import RetrievalError
from retrieval.wire import MAX_TOP_K, BatchSearchResponse, SearchMode

from .rankings import Rankings

logger = logging.getLogger(__name__)

#: Search modes the service knows (``GET /info`` says which the served version has).
SERVICE_MODES: tuple[str, ...] = get_args(SearchMode)
#: The longest ``Retry-After`` honoured; a longer one is waited for this long instead.
MAX_RETRY_WAIT_S = 30.0


def open_client(url: str, timeout_s: float = 60.0) -> httpx.Client:
    """The HTTP client ``md2pr-evaluate`` uses for ``--service-url`` (tests replace this factory)."""
    return httpx.Client(base_url=url, timeout=timeout_s)


def clamp_depth(depth: int) -> int:
    """``depth`` limited to the service's ``top_k`` maximum (:data:`retrieval.wire.MAX_TOP_K`),
    with a warning when it is cut."""
    if depth > MAX_TOP_K:
        logger.warning(
            "depth %d is above the service's top_k limit %d: the service is evaluated at depth %d, "
            "and measures with a larger cut-off are left out",
            depth,
            MAX_TOP_K,
            MAX_TOP_K,
        )
        return MAX_TOP_K
    return depth


class _Session:
    """One evaluation's calls to one service: error mapping, 429 retries, version pinning."""

    def __init__(self, client: httpx.Client, max_attempts: int, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.url = str(client.base_url).rstrip("/")
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.retries = 0  # 429 answers waited out, recorded in the config

    def request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """Send one request; 429 is retried after ``Retry-After``; a transport failure is a RetrievalError.

        At most ``max_attempts`` tries; the last answer is returned whatever its status.
        """

        def waited(state: tenacity.RetryCallState) -> None:
            logger.warning("%s %s: service overloaded (429); retrying in %.1f s (attempt %d of %d)",
                           method, path, state.upcoming_sleep, state.attempt_number + 1, self.max_attempts)
            self.retries += 1

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(lambda response: response.status_code == 429),
            wait=lambda state: retry_after_s(state.outcome.result()),
            stop=tenacity.stop_after_attempt(self.max_attempts),
            sleep=self.sleep,
            before_sleep=waited,
            retry_error_callback=lambda state: state.outcome.result(),  # the last 429, answered as it is
        )
        return retrying(self._send, method, path, what, **kwargs)

    def _send(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise RetrievalError(f"the service is not reachable at {self.url} (is it running?)") from None
        except httpx.TimeoutException:
            raise RetrievalError(f"{method} {self.url}{path} ({what}): no answer in time") from None
        except httpx.TransportError as exc:
            raise RetrievalError(f"{method} {self.url}{path} ({what}) failed: {_one_line(str(exc)) or type(exc).__name__}") from None

    def json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """A 2xx answer's JSON object; any other status is a RetrievalError naming it and the service's message."""
        response = self.request(method, path, what, **kwargs)
        if not response.is_success:
            raise RetrievalError(
                f"{method} {self.url}{path} ({what}) answered {response.status_code}: {error_message(response)}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RetrievalError(f"{method} {self.url}{path} ({what}): the answer is not a JSON object; is this an md2pr service?")
        return body

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/readyz`` until 200; 503 (loading) is waited for up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.request("GET", "/readyz", "readiness")
            if response.is_success:
                return
            if response.status_code != 503:
                raise RetrievalError(
                    f"GET {self.url}/readyz answered {response.status_code}: {error_message(response)}"
                )
            if time.monotonic() >= deadline:
                raise RetrievalError(
                    f"the service at {self.url} was not ready within {timeout_s:g} s: {error_message(response)}"
                )
            self.sleep(min(retry_after_s(response, default=0.5), max(0.05, deadline - time.monotonic())))


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_message(response: httpx.Response) -> str:
    """The service's ``error`` sentence, or the start of a body that is not the service's error shape."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return _one_line(body["error"])
    return _one_line(response.text) or response.reason_phrase or "no message"


def retry_after_s(response: httpx.Response, default: float = 1.0) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds form), within ``[0, MAX_RETRY_WAIT_S]``.

    A missing or unreadable header (the HTTP-date form included) means ``default``.
    """
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        seconds = default
    if seconds != seconds:  # NaN
        seconds = default
    return min(max(seconds, 0.0), MAX_RETRY_WAIT_S)


def service_rankings(
    client: httpx.Client,
    queries: dict[str, str],
    depth: int,
    mode: str = "dense",
    batch_size: int = 32,
    *,
    ready_timeout_s: float = 120.0,
    max_attempts: int = 5,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Rankings, dict[str, Any]]:
    """Ask a running service every query; per query id, ``(docid, score)`` best first, and the config.

    ``client`` has the service's base URL (an :class:`httpx.Client`, or Starlette's
    ``TestClient`` in tests). Queries go in batches of at most ``batch_size`` and of the
    service's ``max_queries_per_request``. ``depth`` above :data:`retrieval.wire.MAX_TOP_K` is clamped
    (logged); the depth actually used is in the config. A 429 is retried after its
    ``Retry-After`` (at most ``max_attempts`` tries per request); ``sleep`` is injectable for tests.

    Config: ``{"service_url", "mode", "index_version", "model": {"fingerprint", "source"},
    "family", "count", "depth", "requested_depth", "batch_size", "retries"}``; ``index_version``,
    ``model``, ``family`` and ``count`` are from ``GET /info``, ``retries`` counts 429 answers
    waited out. Every ``/search`` answer must name that same index version and model, else
    a :class:`RetrievalError` ends the run.
    """
    if mode not in SERVICE_MODES:
        raise RetrievalError(f"unknown service mode {mode!r} (one of {', '.join(SERVICE_MODES)})")
    if depth < 1 or batch_size < 1 or max_attempts < 1:
        raise RetrievalError(f"depth, batch size and attempts must be positive, got {depth}, {batch_size}, {max_attempts}")
    session = _Session(client, max_attempts, sleep)
    session.wait_ready(ready_timeout_s)
    info = session.json("GET", "/info", "what is served")
    try:
        version = str(info["index"]["version"])
        fingerprint = str(info["model"]["fingerprint"])
        count = int(info["index"]["count"])
        modes = list(info["index"].get("modes", SERVICE_MODES))
        per_request = int(info["serving"]["max_queries_per_request"])
    except (KeyError, TypeError, ValueError):
        raise RetrievalError(f"GET {session.url}/info: not the answer of an md2pr service (missing index/model/serving fields)") from None
    if mode not in modes:
        raise RetrievalError(f"the index version {version} served at {session.url} has no {mode} mode (it has: {', '.join(modes)})")
    used = clamp_depth(depth)
    batch = max(1, min(batch_size, per_request))
    ids = list(queries)
    rankings: Rankings = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        what = f"queries {start + 1}-{start + len(chunk)} of {len(ids)}"
        body = session.json(
            "POST",
            "/search",
            what,
            json={"queries": [queries[q] for q in chunk], "top_k": used, "mode": mode, "return_text": False},
        )
        answered = body.get("index_version")
        # The model answer is the fingerprint's first 12 hex digits (retrieval.wire.ModelId).
        model = body.get("model")
        if answered != version or not isinstance(model, str) or not fingerprint.startswith(model):
            raise RetrievalError(
                f"the service at {session.url} changed index version or model during the evaluation "
                f"({version}/{fingerprint[:12]} at the start, {answered}/{model} for {what}): "
                "the rankings would mix two indexes; run again once the swap is done"
            )
        try:
            answer = BatchSearchResponse.model_validate(body)
        except ValidationError as exc:
            where = ".".join(map(str, exc.errors()[0]["loc"]))
            raise RetrievalError(f"POST {session.url}/search ({what}): not a batch search answer ({where}: {exc.errors()[0]['msg']})") from None
        if len(answer.results) != len(chunk):
            raise RetrievalError(f"POST {session.url}/search ({what}): expected {len(chunk)} results in the answer")
        for qid, result in zip(chunk, answer.results):
            rankings[qid] = [(h.docid, h.score) for h in sorted(result.hits, key=lambda h: h.rank)]
    config = {
        "service_url": session.url,
        "mode": mode,
        "index_version": version,
        "model": {"fingerprint": fingerprint, "source": info["model"].get("source")},
        "family": info["index"].get("family"),
        "count": count,
        "depth": used,
        "requested_depth": depth,
        "batch_size": batch,
        "retries": session.retries,
    }
    return rankings, config
