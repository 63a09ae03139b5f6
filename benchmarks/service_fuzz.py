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

import argparse
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import schemathesis
from service_common import (
    PROJECT,
    add_index_arguments,
    add_report_arguments,
    command_line,
    machine_facts,
    report_path,
    server,
    use_service_environment,
    write_report,
)

# The checks and the fuzzing loop are the test suite's (tests/test_service_fuzz.py runs them
# in-process): one definition, imported under the name pytest gives it.
sys.path.insert(0, str(PROJECT / "tests"))
from fuzz_checks import CHECKS, fuzz_operations  # noqa: E402


def fuzz(url: str, examples: int) -> dict:
    """Fuzz the service at ``url`` (:func:`fuzz_checks.fuzz_operations`); the report's numbers."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    started = time.monotonic()
    statuses, failures = fuzz_operations(
        schema,
        examples,
        call=lambda case: case.call(base_url=url, timeout=60),
        on_start=lambda label, mode: print(f"{label} [{mode}] ...", flush=True),
    )
    total = sum(statuses.values())
    server_errors = sum(n for (_, status), n in statuses.items() if status >= 500)
    return {
        "requests": total,
        "server_errors": server_errors,
        "check_failures": len(failures),
        "failures": [{**f, "failure": f["failure"][:2000]} for f in failures[:20]],
        "by_operation_and_status": dict(sorted((f"{label} {status}", n) for (label, status), n in statuses.items())),
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (default: start one on --index)")
    add_index_arguments(parser, queries=False)
    parser.add_argument("--examples", type=int, default=300, help="most requests per operation and mode")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples = 10
    output = report_path(args, "service-fuzz")
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
