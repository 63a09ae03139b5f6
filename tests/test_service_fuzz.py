"""A bounded schemathesis run against the service's own OpenAPI document, in-process.

Every phase of ``schemathesis run`` (examples; coverage: boundary values, wrong types, missing
and repeated parameters, undeclared methods, missing auth; fuzzing: schema-valid and
schema-violating requests) with every check: none may get a 5xx, and every answer must match
the documented status codes, content types, headers and response schemas, with ``Allow`` on a
405, invalid data rejected and valid data accepted (up to the documented exceptions). The
checks and the loop are ``fuzz_checks.py``'s; ``benchmarks/service_fuzz.py`` runs the same
checks with the ``schemathesis run`` command against a live server, at thousands of requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra (pip install -e '.[test]')")

from fuzz_checks import fuzz_config, fuzz_schema  # noqa: E402  (needs schemathesis: after the importorskip)
from schemathesis.python import asgi  # noqa: E402

from index_build.cli import main as build_main  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

EXAMPLES_PER_OPERATION_AND_PHASE = 25
ADMIN_KEY = "fuzz-key"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, noveleval: Path, tiny_model_dir: Path, wait_until_ready):
    root = tmp_path_factory.mktemp("fuzz-index") / "noveleval"
    argv = ["--corpus", str(noveleval), "--index-root", str(root), "--encoder", str(tiny_model_dir), "--no-progress"]
    assert build_main(argv) == 0
    application = create_app(Settings(index=root, torch_threads=1, access_log=False, admin_api_key=ADMIN_KEY))
    with asgi.get_client(application) as client:  # starts the lifespan: the index loads
        wait_until_ready(client.get)
        yield application
    asgi.shutdown_lifespans()


def test_fuzzed_requests_get_no_server_error_and_match_the_schema(app) -> None:
    config = fuzz_config(EXAMPLES_PER_OPERATION_AND_PHASE, headers={"X-API-Key": ADMIN_KEY})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    statuses, failures = fuzz_schema(schema)
    total = sum(statuses.values())
    assert total >= 150, statuses
    assert not [k for k in statuses if k[1] >= 500], statuses
    assert not failures, "\n\n".join(
        f"{f['operation']} [{f['check']}] -> {f['status']}: {f['failure']}\n{f['curl']}" for f in failures[:5]
    )
    assert statuses[("POST /search", 200)] > 10 and statuses[("POST /search", 422)] > 10  # both kinds were reached
    # the coverage phase's scenarios were sent: undeclared methods, admin calls with and without the key
    assert statuses[("OPTIONS /search", 405)] >= 1 and statuses[("DELETE /search", 405)] >= 1
    assert statuses[("POST /admin/reload", 200)] >= 1 and statuses[("POST /admin/reload", 401)] >= 1
