"""Property-based fuzzing of a running ingress from its served OpenAPI document (schemathesis).

Every operation of ``/openapi.json`` is called with generated requests, once per identity (a device
key and the operator key), in positive (schema-valid) and negative (schema-violating) modes. Each
response must not be a 5xx, must match its documented schema and use a documented status code.

Usage (against a running ingress, e.g. after ``make run``)::

    .venv/bin/python -m bench.fuzz_api --url http://127.0.0.1:8000 --admin-key sk_live_... --examples 200

``--admin-key`` defaults to ``TRIBUTARY_ADMIN_API_KEY``; a device key is registered through the API
(or pass ``--device-key``). ``--operation`` (repeatable, substring of ``METHOD /path``) narrows the run;
``--header 'X-Forwarded-For: 198.51.100.17'`` keeps the registration endpoint's per-address rate-limit
counter apart from other local clients.
Run it against an ingress whose ``TRIBUTARY_RATE_LIMIT_PER_MINUTE`` is high enough for the request
count (operations x identities x 2 modes x examples), or most answers are 429s. Prints every operation
with the examples tried and the failures found; exits 1 when any failure was found.

``tests/e2e/test_api_fuzz.py`` runs the same engine with a small example count in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# Operations that answer with something other than the API's JSON (prometheus text, HTML docs).
SKIPPED = ("GET /metrics",)


@dataclass
class Failure:
    operation: str
    identity: str
    mode: str
    message: str
    status: int | None
    body: str
    reproduce: str


@dataclass
class OperationResult:
    operation: str
    identity: str
    mode: str
    examples: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)


def register_device(base_url: str, prefix: str = "fuzz") -> str:
    """A fresh device key, registered through the API."""
    response = httpx.post(f"{base_url}/api/v1/devices/register",
                          json={"device_id": f"{prefix}-{uuid.uuid4().hex[:12]}"}, timeout=30)
    response.raise_for_status()
    key: str = response.json()["api_key"]
    return key


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_first_line(e) for e in exc.exceptions)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def fuzz_operation(
    operation: Any, base_url: str, identity: str, key: str, mode: Any, examples: int,
    session: requests.Session, timeout_s: float = 30.0, max_failures: int = 3,
    extra_headers: dict[str, str] | None = None,
) -> OperationResult:
    """Run ``examples`` generated requests; record (not raise) failures so nothing is shrunk or retried."""
    label = operation.label
    result = OperationResult(label, identity, mode.value)
    headers = {**(extra_headers or {}), "Authorization": f"Bearer {key}"}

    @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                         verbosity=hypothesis.Verbosity.quiet)
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        result.examples += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout_s)
        except requests.RequestException as exc:  # a timeout or a dropped connection is a failure too
            result.failures.append(Failure(label, identity, mode.value, _first_line(exc), None, "",
                                           case.as_curl_command(headers=headers)))
            return
        result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, BaseExceptionGroup) as exc:
            if len(result.failures) < max_failures:
                result.failures.append(Failure(
                    label, identity, mode.value, _first_line(exc), response.status_code, response.text[:500],
                    case.as_curl_command(headers=headers)))

    # negative mode has nothing to violate for operations without inputs
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()
    return result


def operations(base_url: str, selected: Sequence[str] = ()) -> tuple[Any, list[Any]]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    ops = []
    for item in schema.get_all_operations():
        if not isinstance(item, Ok):
            raise item.err()  # an operation the document describes wrongly is a failure of its own
        operation = item.ok()
        if operation.label in SKIPPED:
            continue
        if selected and not any(s in operation.label for s in selected):
            continue
        ops.append(operation)
    return schema, ops


def fuzz(
    base_url: str, identities: dict[str, str], examples: int, *, selected: Sequence[str] = (),
    modes: Iterable[Any] = MODES, progress: Callable[[OperationResult], None] | None = None,
    extra_headers: dict[str, str] | None = None,
) -> list[OperationResult]:
    """Fuzz every operation (or the ``selected`` ones) once per identity and generation mode.

    ``extra_headers`` go with every request, e.g. an ``X-Forwarded-For`` so the open registration
    endpoint's per-address rate limit counts the fuzzing apart from other clients on the same host.
    """
    _, ops = operations(base_url, selected)
    results = []
    with requests.Session() as session:
        for operation in ops:
            for identity, key in identities.items():
                for mode in modes:
                    outcome = fuzz_operation(operation, base_url, identity, key, mode, examples, session,
                                             extra_headers=extra_headers)
                    results.append(outcome)
                    if progress is not None:
                        progress(outcome)
    return results


def print_result(result: OperationResult) -> None:
    statuses = " ".join(f"{code}x{count}" for code, count in sorted(result.statuses.items()))
    mark = "FAIL" if result.failures else "ok"
    print(f"{mark:4} {result.operation:55} {result.identity:8} {result.mode:8} "
          f"examples={result.examples:4} [{statuses}]", flush=True)
    for failure in result.failures:
        print(f"     - {failure.message[:300]}\n       status={failure.status} body={failure.body[:200]}\n"
              f"       {failure.reproduce[:400]}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="ingress base URL")
    parser.add_argument("--admin-key", default=os.environ.get("TRIBUTARY_ADMIN_API_KEY", ""),
                        help="operator key (default: TRIBUTARY_ADMIN_API_KEY)")
    parser.add_argument("--device-key", default="", help="device key (default: register a new device)")
    parser.add_argument("--examples", type=int, default=100, help="examples per operation, identity and mode")
    parser.add_argument("--operation", action="append", default=[], help="only operations containing this")
    parser.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                        help="extra header on every request, e.g. 'X-Forwarded-For: 198.51.100.17'")
    args = parser.parse_args(argv)
    extra = dict((name.strip(), value.strip()) for name, _, value in (h.partition(":") for h in args.header))

    identities = {"device": args.device_key or register_device(args.url)}
    if args.admin_key:
        identities["operator"] = args.admin_key
    else:
        print("no operator key given: fuzzing as a device only", file=sys.stderr)
    started = time.monotonic()
    results = fuzz(args.url, identities, args.examples, selected=args.operation, progress=print_result,
                   extra_headers=extra)
    failures = [f for r in results for f in r.failures]
    print(f"\noperations={len({r.operation for r in results})} runs={len(results)} "
          f"examples={sum(r.examples for r in results)} failures={len(failures)} "
          f"seconds={time.monotonic() - started:.1f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
