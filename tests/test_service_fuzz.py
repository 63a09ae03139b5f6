"""A bounded schemathesis run against the service's own OpenAPI document.

Every operation gets schema-valid and schema-violating requests (hypothesis-generated);
none may get a 5xx, and every answer must match the documented status codes, content types
and response schemas. ``benchmarks/service_fuzz.py`` runs the same checks at 1,000+
requests against a live server.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a test extra (pip install -e '.[test]')")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from index_build.cli import main as build_main  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

EXAMPLES_PER_OPERATION_AND_MODE = 25


def accepted_unless_the_family_lacks_the_parameter(ctx, response, case):
    """``positive_data_acceptance``, except for ``search_params`` the served index family lacks.

    ``nprobe``/``efSearch`` are valid in the schema (the served family can change at every
    swap), so a schema-valid body may still name a parameter this index does not have: 422
    ``invalid_search_params`` is then the documented answer.
    """
    # Likewise a fusion setting that is only out of bounds in combination with the version's
    # defaults (both weights 0): ``invalid_search_mode`` is the documented answer.
    if response.status_code == 422 and (
        b"invalid_search_params" in response.content or b"invalid_search_mode" in response.content
    ):
        return None
    return positive_data_acceptance(ctx, response, case)


def rejected_including_413(ctx, response, case):
    """``negative_data_rejection``, counting 413 as a rejection (too many ``queries``: the documented answer)."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    rejected_including_413,
    accepted_unless_the_family_lacks_the_parameter,
]


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
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case) -> None:
                response = case.call()
                statuses[(operation.label, response.status_code)] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as exc:  # a FailureGroup: record, keep fuzzing
                    failures.append(
                        f"{operation.label} [{mode.value}] -> {response.status_code}: {exc}\n{case.as_curl_command()}"
                    )

            try:
                exercise()
            except Unsatisfiable:
                pass  # no way to violate the schema of an operation without parameters
    total = sum(statuses.values())
    assert total >= 150, statuses
    assert not [k for k in statuses if k[1] >= 500], statuses
    assert not failures, "\n\n".join(failures[:5])
    assert statuses[("POST /search", 200)] > 10 and statuses[("POST /search", 422)] > 10  # both kinds were reached
