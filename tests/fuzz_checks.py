"""Schemathesis fuzzing of the service's OpenAPI document: the checks and the bounded loop.

One definition for both runs: ``tests/test_service_fuzz.py`` (an in-process ASGI app, a few
hundred requests, this module's loop) and ``benchmarks/service_fuzz.py`` (a live server, the
``schemathesis run`` command with every phase and every check, thousands of requests). The
benchmark loads this module as the command's hooks (``SCHEMATHESIS_HOOKS=fuzz_checks`` with
``tests/`` on ``PYTHONPATH``), so the command runs the two documented exceptions below in place
of the checks they wrap; no test module ever imports from ``benchmarks/``. The in-process run
(:func:`fuzz_schema`) is schemathesis's own engine, the one behind ``schemathesis run``, with
the same phases and checks.

Needs schemathesis (a test extra: ``pip install -e '.[test]'``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import schemathesis
from schemathesis.checks import CHECKS as REGISTRY
from schemathesis.checks import load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
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
#: valid data accepted up to the two documented exceptions above.
CHECKS = [check for check in REGISTRY.get_all() if check.__name__ not in REPLACED_CHECKS]


def fuzz_config(max_examples: int, seed: int = 1, headers: dict[str, str] | None = None) -> SchemathesisConfig:
    """A schemathesis configuration with :data:`CHECKS` as its checks (and no others).

    At most ``max_examples`` cases per operation and phase, from ``seed`` (the same cases every
    run), every failure of a scenario reported (not only the first), ``headers`` on every request.
    """
    return SchemathesisConfig.from_dict(
        {
            "seed": seed,
            "continue-on-failure": True,
            "workers": 1,
            "headers": headers or {},
            "checks": {"enabled": False, **{check.__name__: {"enabled": True} for check in CHECKS}},
            "generation": {"max-examples": max_examples},
        }
    )


def fuzz_schema(schema: Any) -> tuple[Counter[tuple[str, int]], list[dict[str, Any]]]:
    """Run every schemathesis phase on ``schema`` (loaded with a :func:`fuzz_config`) and check every answer.

    The phases are those of ``schemathesis run``: the documented examples; coverage (boundary
    values, wrong types, missing and repeated parameters, undeclared methods, missing auth);
    fuzzing (hypothesis-generated valid and invalid requests); stateful (none: the API has no
    links between operations). A failed check is recorded, not raised, so one run reports them all.

    Returns the answers counted by ``("METHOD /path" as sent, status code)`` and the failures,
    each ``{"operation", "check", "status", "failure" (the check's message), "curl" (to replay it)}``.
    """
    statuses: Counter[tuple[str, int]] = Counter()
    failures: list[dict[str, Any]] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            raise event.exception
        if not isinstance(event, events.ScenarioFinished):
            continue
        recorder = event.recorder
        path = recorder.label.split(" ", 1)[-1]
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                statuses[(f"{interaction.request.method} {path}", interaction.response.status_code)] += 1
        for case_id, results in recorder.checks.items():
            for result in results:
                if result.failure_info is None:
                    continue
                interaction = recorder.interactions.get(case_id)
                failures.append(
                    {
                        "operation": recorder.label,
                        "check": result.name,
                        "status": interaction.response.status_code if interaction and interaction.response else None,
                        "failure": str(result.failure_info.failure),
                        "curl": result.failure_info.code_sample,
                    }
                )
    return statuses, failures
