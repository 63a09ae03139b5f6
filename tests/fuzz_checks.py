"""Schemathesis fuzzing of the service's OpenAPI document: the checks and the bounded loop.

One definition for both runs: ``tests/test_service_fuzz.py`` (an in-process ASGI app, a few
hundred requests, this module's loop) and ``benchmarks/service_fuzz.py`` (a live server, the
``schemathesis run`` command with every phase and every check, thousands of requests). The
benchmark loads this module as the command's hooks (``SCHEMATHESIS_HOOKS=fuzz_checks`` with
``tests/`` on ``PYTHONPATH``), so the command runs the two documented exceptions below in place
of the checks they wrap; no test module ever imports from ``benchmarks/``.

Needs schemathesis (a test extra: ``pip install -e '.[test]'``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

#: The schemathesis checks the two documented exceptions below stand in for.
REPLACED_CHECKS = ("positive_data_acceptance", "negative_data_rejection")


@schemathesis.check
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


@schemathesis.check
def rejected_including_413(ctx, response, case):
    """``negative_data_rejection``, counting 413 as a rejection (too many ``queries``: the documented answer)."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


load_all_checks()
#: Every check schemathesis has (no 5xx; documented status, content type, headers and body; an
#: ``Allow`` on 405; auth not ignored; required headers; ...), with invalid data rejected and
#: valid data accepted up to the two documented exceptions above. Checks that judge the
#: coverage phase's scenarios (an undeclared method, a missing header) pass the cases of
#: :func:`fuzz_operations`, which has none; ``schemathesis run`` sends them.
CHECKS = [check for check in REGISTRY.get_all() if check.__name__ not in REPLACED_CHECKS]


def fuzz_operations(
    schema: Any,
    max_examples: int,
    call: Callable[[Any], Any],
    on_start: Callable[[str, str], None] | None = None,
) -> tuple[Counter[tuple[str, int]], list[dict[str, Any]]]:
    """Send every operation of ``schema`` schema-valid and schema-violating requests and check each answer.

    For each operation and each generation mode (``positive``, ``negative``), hypothesis generates
    at most ``max_examples`` cases (derandomized: the same cases every run); ``call(case)`` sends
    one and returns its response, which is validated against :data:`CHECKS`. ``on_start(label,
    mode)`` is told when an operation and mode begin. A failed check is recorded, not raised, so
    one run reports them all.

    Returns the answers counted by ``(operation label, status code)`` and the failures, each
    ``{"operation", "mode", "status", "failure" (the checks' message), "curl" (to replay it)}``.
    """
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[dict[str, Any]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if on_start is not None:
                on_start(operation.label, mode.value)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case) -> None:
                response = call(case)
                statuses[(operation.label, response.status_code)] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as exc:  # a FailureGroup: record it and keep fuzzing
                    failures.append(
                        {
                            "operation": operation.label,
                            "mode": mode.value,
                            "status": response.status_code,
                            "failure": str(exc),
                            "curl": case.as_curl_command(),
                        }
                    )

            try:
                exercise()
            except Unsatisfiable:
                pass  # an operation without parameters cannot be sent schema-violating data
    return statuses, failures
