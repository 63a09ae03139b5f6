"""Schemathesis against a live service's ``/openapi.json``: generated requests, zero server errors.

Every operation gets schema-valid (positive) and schema-violating (negative) requests from
hypothesis, ``--examples`` of each at most (operations without parameters have only a few
distinct requests). Each answer is checked: no 5xx, a documented status code, content type
and headers, a body matching the documented schema, invalid data rejected, valid data
accepted (except ``search_params`` the served index family lacks: 422 there is the
documented answer). The goal is >= 1,000 requests and 0 server errors.

Run (quiet machine):  python benchmarks/service_fuzz.py              (starts its own server on the SciFact index)
Against a server:     python benchmarks/service_fuzz.py --url http://127.0.0.1:8000
Smoke test:           python benchmarks/service_fuzz.py --smoke
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_common import (  # noqa: E402
    PROJECT,
    RESULTS,
    command_line,
    machine_facts,
    server,
    write_report,
)


def accepted_unless_the_family_lacks_the_parameter(ctx, response, case):
    """``positive_data_acceptance``, except 422 ``invalid_search_params`` (family-dependent, documented)."""
    if response.status_code == 422 and b"invalid_search_params" in response.content:
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


def fuzz(url: str, examples: int) -> dict:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    statuses: Counter[str] = Counter()
    failures: list[dict] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            print(f"{operation.label} [{mode.value}] ...", flush=True)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case) -> None:
                response = case.call(base_url=url, timeout=60)
                statuses[f"{operation.label} {response.status_code}"] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as exc:  # a FailureGroup: record it and go on
                    failures.append(
                        {
                            "operation": operation.label,
                            "mode": mode.value,
                            "status": response.status_code,
                            "failure": str(exc)[:2000],
                            "curl": case.as_curl_command(),
                        }
                    )

            try:
                exercise()
            except Unsatisfiable:
                pass  # an operation without parameters cannot be sent schema-violating data
    total = sum(statuses.values())
    server_errors = sum(n for key, n in statuses.items() if key.rsplit(" ", 1)[1].startswith("5"))
    return {
        "requests": total,
        "server_errors": server_errors,
        "check_failures": len(failures),
        "failures": failures[:20],
        "by_operation_and_status": dict(sorted(statuses.items())),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (default: start one on --index)")
    parser.add_argument("--index", type=Path, default=PROJECT / "artifacts" / "indexes" / "scifact")
    parser.add_argument("--examples", type=int, default=300, help="most requests per operation and mode")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples = 10
    output = args.output or (
        Path(tempfile.gettempdir()) / "service-fuzz-smoke.json" if args.smoke else RESULTS / "service-fuzz.json"
    )
    report = {
        "kind": "service_fuzz",
        "command": command_line(),
        "machine": machine_facts(None),
        "schemathesis": schemathesis.__version__ if hasattr(schemathesis, "__version__") else "",
        "examples_per_operation_and_mode": args.examples,
        "checks": [c.__name__ for c in CHECKS],
        "smoke": args.smoke,
    }
    logs = Path(tempfile.mkdtemp(prefix="md2pr-fuzz-"))
    context = (
        nullcontext(args.url)
        if args.url
        else server({"MD2PR_INDEX": str(args.index), "MD2PR_ACCESS_LOG": "false"}, logs / "server.log")
    )
    with context as url:
        report["index"] = str(args.index) if not args.url else url
        report.update(fuzz(url, args.examples))
    write_report(report, output)
    print(
        f"{report['requests']} requests, {report['server_errors']} server errors, {report['check_failures']} check failures "
        f"in {report['elapsed_s']} s"
    )
    for failure in report["failures"][:5]:
        print(
            f"- {failure['operation']} [{failure['mode']}] {failure['status']}: {failure['failure'][:300]}\n  {failure['curl']}"
        )
    return 0 if report["server_errors"] == 0 and report["check_failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
