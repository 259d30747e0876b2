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
SKIPPED = ("GET /metrics", "GET /api/v1/metrics")


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


# --- hostile input: what a generator that keeps to the schema's shape rarely sends ---------------

ENVELOPE_KEYS = {"error", "error_code", "message", "status_code"}
HOSTILE_DEPTH = 100_000


def hostile_bodies(max_request_bytes: int) -> list[tuple[str, bytes, str]]:
    """(name, body, content type): malformed, wrongly typed, deeply nested, huge, not UTF-8."""
    nested = b"[" * HOSTILE_DEPTH + b"]" * HOSTILE_DEPTH
    nested_field = b'{"device_id": ' + b'{"a": ' * 20_000 + b"1" + b"}" * 20_000 + b"}"
    huge = b'{"x": "' + b"a" * (max_request_bytes + 1) + b'"}'
    return [
        ("truncated JSON", b'{"device_id": ', "application/json"),
        ("array", b"[]", "application/json"),
        ("string", b'"text"', "application/json"),
        ("number", b"12", "application/json"),
        ("null", b"null", "application/json"),
        ("nested array", nested, "application/json"),
        ("nested object in a field", nested_field, "application/json"),
        ("over the size limit", huge, "application/json"),
        ("not UTF-8", b"\xff\xfe{\x00", "application/json"),
        ("JSON sent as text", b'{"a": 1}', "text/plain"),
        ("multipart without parts", b"--x--\r\n", "multipart/form-data; boundary=x"),
        ("multipart without boundary", b"garbage", "multipart/form-data"),
    ]


ODD_IDS = ["..%2F..%2Fetc%2Fpasswd", "a" * 5000, "%00", "%F0%9F%92%A9", "%20", "-1", "9" * 40, "%ff", "x%0Ay"]
ODD_QUERY_VALUES = ["-1", "9" * 40, "%ff", "", "a" * 5000, "true%00"]


@dataclass
class HostileResult:
    operation: str
    tried: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    slowest_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def _hostile_requests(operation: Any, max_request_bytes: int) -> list[tuple[str, str, bytes | None, str | None]]:
    """(what, path with query, body, content type) for one operation."""
    definition = operation.definition.raw
    params = [p for p in definition.get("parameters", []) if isinstance(p, dict)]
    path_params = [p["name"] for p in params if p.get("in") == "path"]
    query_params = [p["name"] for p in params if p.get("in") == "query"]
    path = operation.path
    benign = path
    for name in path_params:
        benign = benign.replace(f"{{{name}}}", "x").replace(f"{{{name}:path}}", "x")
    out: list[tuple[str, str, bytes | None, str | None]] = []
    for name in path_params:
        for odd in ODD_IDS:
            odd_path = path.replace(f"{{{name}}}", odd)
            for other in path_params:
                odd_path = odd_path.replace(f"{{{other}}}", "x")
            out.append((f"path {name}={odd[:20]}", odd_path, None, None))
    for name in query_params:
        for odd in ODD_QUERY_VALUES:
            out.append((f"query {name}={odd[:20]}", f"{benign}?{name}={odd}", None, None))
    if "requestBody" in definition:
        for what, body, content_type in hostile_bodies(max_request_bytes):
            out.append((f"body: {what}", benign, body, content_type))
    else:  # a body where none is expected, and parameters nobody declared
        out.append(("unexpected nested body", benign, b"[" * HOSTILE_DEPTH + b"]" * HOSTILE_DEPTH,
                    "application/json"))
    out.append(("undeclared query", f"{benign}?%ff=%ff&{'a' * 5000}=1", None, None))
    return out


def hostile(base_url: str, key: str, *, max_request_bytes: int, bound_s: float = 10.0,
            selected: Sequence[str] = (), extra_headers: dict[str, str] | None = None,
            progress: Callable[[HostileResult], None] | None = None) -> list[HostileResult]:
    """Every operation with odd path ids, odd query values and hostile bodies: each answer must come
    within ``bound_s``, be no 5xx but 503, and a 4xx must carry the error envelope."""
    _, ops = operations(base_url, selected)
    headers = {**(extra_headers or {}), "Authorization": f"Bearer {key}"}
    results = []
    with httpx.Client(base_url=base_url, timeout=bound_s + 5) as client:
        for operation in ops:
            result = HostileResult(operation.label)
            for what, path, body, content_type in _hostile_requests(operation, max_request_bytes):
                request_headers = {**headers, **({"Content-Type": content_type} if content_type else {})}
                started = time.monotonic()
                try:
                    response = client.request(operation.method.upper(), path, content=body, headers=request_headers)
                except httpx.HTTPError as exc:
                    result.failures.append(f"{what}: {_first_line(exc)}")
                    continue
                elapsed = time.monotonic() - started
                result.tried += 1
                result.slowest_s = max(result.slowest_s, elapsed)
                result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
                problem = _hostile_problem(response, elapsed, bound_s)
                if problem and len(result.failures) < 5:
                    result.failures.append(f"{what}: {problem}")
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def _hostile_problem(response: httpx.Response, elapsed: float, bound_s: float) -> str | None:
    if elapsed > bound_s:
        return f"answered after {elapsed:.1f}s (bound {bound_s:.0f}s)"
    if response.status_code >= 500 and response.status_code != 503:
        return f"{response.status_code} {response.text[:200]}"
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            return f"{response.status_code} without a JSON error envelope: {response.text[:200]}"
        if not isinstance(body, dict) or not set(body) >= ENVELOPE_KEYS:
            return f"{response.status_code} without the error envelope: {response.text[:200]}"
    return None


def print_hostile(result: HostileResult) -> None:
    statuses = " ".join(f"{code}x{count}" for code, count in sorted(result.statuses.items()))
    mark = "FAIL" if result.failures else "ok"
    print(f"{mark:4} {result.operation:55} hostile={result.tried:3} slowest={result.slowest_s:5.2f}s [{statuses}]",
          flush=True)
    for failure in result.failures:
        print(f"     - {failure[:400]}", flush=True)


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
    parser.add_argument("--hostile", action="store_true",
                        help="also send odd path ids, odd query values and hostile bodies (as the operator)")
    parser.add_argument("--max-request-bytes", type=int, default=16 * 1024 * 1024,
                        help="the ingress's TRIBUTARY_MAX_REQUEST_BYTES: the hostile 'huge' body is one byte over")
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
    failures: list[Any] = [f for r in results for f in r.failures]
    print(f"\noperations={len({r.operation for r in results})} runs={len(results)} "
          f"examples={sum(r.examples for r in results)} failures={len(failures)} "
          f"seconds={time.monotonic() - started:.1f}")
    if args.hostile:
        key = identities.get("operator", identities["device"])
        hostile_results = hostile(args.url, key, max_request_bytes=args.max_request_bytes, selected=args.operation,
                                  extra_headers=extra, progress=print_hostile)
        hostile_failures = [f for r in hostile_results for f in r.failures]
        failures += hostile_failures
        print(f"hostile: operations={len(hostile_results)} requests={sum(r.tried for r in hostile_results)} "
              f"failures={len(hostile_failures)} slowest={max(r.slowest_s for r in hostile_results):.2f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
