"""Schemathesis against a live service's ``/openapi.json``: every phase, every check, zero failures.

Runs the ``schemathesis run`` command, as an independent tester would: the examples, coverage
(boundary values, wrong types, repeated and missing parameters, undeclared methods), fuzzing
and stateful phases, at most ``--examples`` cases per operation and phase, with **every check
schemathesis has** (no 5xx; documented status codes, content types, headers and bodies;
``Allow`` on 405; authentication not ignored; invalid data rejected, valid data accepted). Two
checks run as the documented exceptions of ``tests/fuzz_checks.py`` (loaded as the command's
hooks): a schema-valid ``search_params`` the served index family lacks is a documented 422
(``nprobe``/``efSearch`` are valid in the schema because the family can change at every swap),
and 413 counts as a rejection (more ``queries`` than allowed). The server has an admin key and
the command sends it, so ``/admin/reload`` is exercised with and without it.

Run (quiet machine):  python benchmarks/service_fuzz.py              (starts its own server on the SciFact index)
Against a server:     python benchmarks/service_fuzz.py --url http://127.0.0.1:8000 --api-key KEY
Smoke test:           python benchmarks/service_fuzz.py --smoke

Writes ``benchmarks/results/service-fuzz.json``: the command's counts (test cases, failures by
kind, errors), every answer counted by operation and status (from the command's HAR log), and
the first failures in full (with a curl line to replay each).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlsplit

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

# The checks are the test suite's (tests/test_service_fuzz.py runs them in-process): one
# definition, imported under the name pytest gives it and loaded by the command as its hooks.
TESTS = PROJECT / "tests"
sys.path.insert(0, str(TESTS))
from fuzz_checks import CHECKS  # noqa: E402

PHASES = "examples,coverage,fuzzing,stateful"


def schemathesis_command(url: str, examples: int, seed: int, report_dir: Path, api_key: str | None) -> list[str]:
    """The ``schemathesis run`` command line (its executable beside this Python's)."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        url + "/openapi.json",
        "--phases", PHASES,
        "--checks", ",".join(check.__name__ for check in CHECKS),
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--workers", "1",
        "--request-timeout", "60",
        "--continue-on-failure",
        "--report", "json,junit,har",
        "--report-dir", str(report_dir),
    ]
    if api_key:
        command += ["--header", f"X-API-Key: {api_key}"]
    return command


#: Error types of the answers the two documented exceptions of ``fuzz_checks`` let pass.
DOCUMENTED_EXCEPTIONS = ("invalid_search_params", "invalid_search_mode", "payload_too_large")


def _answers(har: Path) -> tuple[Counter[str], Counter[str]]:
    """Every answer of the run from its HAR log, counted as ``"METHOD /path STATUS"``, and the
    answers of a documented exception counted by their error ``type``."""
    counts: Counter[str] = Counter()
    documented: Counter[str] = Counter()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        path = urlsplit(entry["request"]["url"]).path
        status = entry["response"]["status"]
        counts[f"{entry['request']['method']} {path} {status}"] += 1
        if status in (413, 422):
            try:
                kind = json.loads(entry["response"]["content"].get("text") or "null")["type"]
            except (ValueError, TypeError, KeyError):
                continue
            if kind in DOCUMENTED_EXCEPTIONS:
                documented[f"{status} {kind}"] += 1
    return counts, documented


def _failure_texts(junit: Path, limit: int = 20) -> list[dict[str, str]]:
    """The first ``limit`` failures of the JUnit report: operation, check code and the full text."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for failure in list(case.iter("failure")) + list(case.iter("error")):
            out.append({"operation": case.get("name", ""), "code": failure.get("message", ""), "text": (failure.text or "")[:2000]})
    return out[:limit]


def fuzz(url: str, examples: int, seed: int, api_key: str | None) -> dict:
    """Run ``schemathesis run`` against ``url``; the report's numbers."""
    with tempfile.TemporaryDirectory(prefix="md2pr-schemathesis-") as tmp:
        report_dir = Path(tmp)
        command = schemathesis_command(url, examples, seed, report_dir, api_key)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            "SCHEMATHESIS_HOOKS": "fuzz_checks",
        }
        started = time.monotonic()
        # In the temporary folder: the command keeps a crash cache (.schemathesis/) in its working
        # directory, which would land in the repository and replay old cases in later runs.
        done = subprocess.run(command, env=env, cwd=report_dir, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        summaries = sorted(report_dir.glob("json-*.json"))
        if not summaries:
            raise SystemExit(f"error: schemathesis wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        run = json.loads(summaries[0].read_text())
        answers, documented = _answers(next(report_dir.glob("har-*.json")))
        failures = _failure_texts(next(report_dir.glob("junit-*.xml")))
    shown = ["schemathesis"] + [
        "X-API-Key: ***" if part.startswith("X-API-Key:") else "<tmp>" if part == str(report_dir) else part
        for part in command[1:]
    ]
    server_errors = sum(n for key, n in answers.items() if int(key.rsplit(" ", 1)[1]) >= 500)
    return {
        "schemathesis_command": " ".join(part if " " not in part else repr(part) for part in shown),
        "schemathesis_exit_code": done.returncode,
        "phases": {name: phase["status"] for name, phase in run["phases"].items()},
        "operations": run["operations"],
        "test_cases": run["test_cases"],
        "requests": sum(answers.values()),
        "server_errors": server_errors,
        "check_failures": sum(f["count"] for f in run["failures"]),
        "failure_kinds": run["failures"],
        # answers a plain schemathesis check would flag and the documented exceptions accept
        "documented_exceptions": dict(sorted(documented.items())),
        "errors": run["errors"],
        "warnings": {name: items for name, items in run["warnings"].items() if items},
        "failures": failures,
        "by_operation_and_status": dict(sorted(answers.items())),
        "elapsed_s": round(elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    use_service_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running service (default: start one on --index)")
    parser.add_argument("--api-key", default=None, help="with --url: the service's MD2PR_ADMIN_API_KEY, to fuzz admin routes with it")
    add_index_arguments(parser, queries=False)
    parser.add_argument("--examples", type=int, default=300, help="most cases per operation and phase (schemathesis --max-examples)")
    parser.add_argument("--seed", type=int, default=1, help="schemathesis --seed (the same cases every run)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples = 5
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
    api_key = args.api_key if args.url else secrets.token_hex(16)
    logs = Path(tempfile.mkdtemp(prefix="md2pr-fuzz-"))
    context = (
        nullcontext(args.url)
        if args.url
        else server(
            {"MD2PR_INDEX": str(args.index), "MD2PR_ACCESS_LOG": "false", "MD2PR_ADMIN_API_KEY": api_key},
            logs / "server.log",
        )
    )
    with context as url:
        report["index"] = str(args.index) if not args.url else url
        report.update(fuzz(url, args.examples, args.seed, api_key))
    write_report(report, output)
    print(
        f"{report['test_cases']['generated']} test cases, {report['requests']} requests, {report['server_errors']} server errors, "
        f"{report['check_failures']} check failures, {len(report['errors'])} errors in {report['elapsed_s']} s"
    )
    for failure in report["failures"][:5]:
        print(f"- {failure['operation']} {failure['code']}:\n{failure['text'][:1000]}")
    clean = report["server_errors"] == 0 and report["check_failures"] == 0 and not report["errors"]
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
