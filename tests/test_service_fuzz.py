"""A bounded schemathesis run against the service's own OpenAPI document.

Every operation gets schema-valid and schema-violating requests (hypothesis-generated);
none may get a 5xx, and every answer must match the documented status codes, content types
and response schemas. The checks and the loop are ``fuzz_checks.py``'s, which
``benchmarks/service_fuzz.py`` runs at 1,000+ requests against a live server.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra (pip install -e '.[test]')")

from fuzz_checks import fuzz_operations  # noqa: E402  (needs schemathesis: after the importorskip)
from schemathesis.python import asgi  # noqa: E402

from index_build.cli import main as build_main  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

EXAMPLES_PER_OPERATION_AND_MODE = 25


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("fuzz-index") / "noveleval"
    argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"]
    assert build_main(argv) == 0
    application = create_app(Settings(index=root, torch_threads=1, access_log=False, admin_api_key="fuzz-key"))
    with asgi.get_client(application) as client:  # starts the lifespan: the index loads
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.01)
        yield application
    asgi.shutdown_lifespans()


def test_fuzzed_requests_get_no_server_error_and_match_the_schema(app) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses, failures = fuzz_operations(schema, EXAMPLES_PER_OPERATION_AND_MODE, call=lambda case: case.call())
    total = sum(statuses.values())
    assert total >= 150, statuses
    assert not [k for k in statuses if k[1] >= 500], statuses
    assert not failures, "\n\n".join(
        f"{f['operation']} [{f['mode']}] -> {f['status']}: {f['failure']}\n{f['curl']}" for f in failures[:5]
    )
    assert statuses[("POST /search", 200)] > 10 and statuses[("POST /search", 422)] > 10  # both kinds were reached
