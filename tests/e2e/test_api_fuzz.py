"""Property-based fuzzing of every operation of the served OpenAPI document (issue 7, item 2).

schemathesis generates schema-valid and schema-violating requests for each operation of the real
ingress's ``/openapi.json``, as a device and as the operator. No answer may be a 5xx, every answer
must match its documented schema, and every status code must be documented. ``bench/fuzz_api.py``
runs the same engine with many more examples.

The run goes to a dedicated ingress replica of the session's system with a high rate limit (the
shared one allows 100 requests a minute per key) and a short model load wait (a generated
``/models/{id}/load`` for a model nobody can load would otherwise hold a request for 60 s).
Rate-limit counters are shared by every replica (Cassandra), so the replica gets its own operator
key and the requests carry their own ``X-Forwarded-For`` address: fuzzing with the session's
operator key or from the shared 127.0.0.1 registration counter would leave the session's other
tests rate-limited for the rest of the minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest

from bench.fuzz_api import OperationResult, fuzz, hostile, print_hostile, print_result, register_device
from core.api_keys import new_api_key
from tests.e2e.conftest import RunningSystem, ingress_replica

pytestmark = pytest.mark.e2e

EXAMPLES = 15  # per operation, identity and mode: 32 operations x 2 identities x (positive + negative)


FUZZ_OPERATOR_KEY = new_api_key()
FUZZ_ADDRESS = "198.51.100.17"  # TEST-NET-2: never a real client
MAX_REQUEST_BYTES = 256 * 1024  # the replica's JSON body limit: the hostile "huge" body is one byte over
HOSTILE_BOUND_S = 10.0


@pytest.fixture(scope="module")
def fuzz_replica(system: RunningSystem) -> Iterator[str]:
    try:
        with ingress_replica(system, "fuzz-replica", TRIBUTARY_RATE_LIMIT_PER_MINUTE="1000000",
                             TRIBUTARY_MODEL_LOAD_WAIT_S="3", TRIBUTARY_ADMIN_API_KEY=FUZZ_OPERATOR_KEY,
                             TRIBUTARY_LEARNING_GRAPH_HMAC_KEY="fuzz-hmac-key",
                             TRIBUTARY_LEARNING_GRAPH_AES_KEY="ab" * 32,
                             TRIBUTARY_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES)) as url:
            yield url
    finally:
        release_active_round(system)
        retire_active_devices(system)


def release_active_round(system: RunningSystem) -> None:
    """A round the operator's fuzzing started holds the single active slot for >= 60 s; cancel it (as an
    operator would) so the session's other tests can start theirs."""
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    current = httpx.get(f"{system.base_url}/api/v1/training/rounds/current", headers=admin, timeout=30)
    if current.status_code == 200 and current.json()["status"] in ("pending", "active", "aggregating"):
        cancelled = httpx.post(f"{system.base_url}/api/v1/training/rounds/{current.json()['id']}/cancel",
                               headers=admin, timeout=30)
        assert cancelled.status_code in (200, 409), cancelled.text  # 409: it finished meanwhile


def retire_active_devices(system: RunningSystem) -> None:
    """Devices the fuzzing registered and beat stay eligible for a round's start selection (active, recent)
    and took the seats of the next test's own devices; an operator reports them inactive, as a
    device leaving the fleet would, and waits until the device processor has applied it."""
    admin = {"Authorization": f"Bearer {system.admin_key}"}

    def active() -> list[str]:
        found, cursor = [], None
        while True:
            params: dict[str, str | int] = {"status": "active", "limit": 500, **({"cursor": cursor} if cursor else {})}
            page = httpx.get(f"{system.base_url}/api/v1/devices", params=params, headers=admin, timeout=30)
            assert page.status_code == 200, page.text
            found += [d["device_id"] for d in page.json()["devices"]]
            if not (cursor := page.json()["next_cursor"]):
                return found

    deadline = time.monotonic() + 60
    while remaining := active():
        assert time.monotonic() < deadline, f"still active after 60 s: {remaining[:5]}"
        for device_id in remaining:
            beat = httpx.put(f"{system.base_url}/api/v1/devices/{quote(device_id, safe='')}/heartbeat",
                             json={"status": "inactive"}, headers=admin, timeout=30)
            assert beat.status_code in (200, 404), beat.text  # 404: the fuzzing deleted it meanwhile
        time.sleep(1.0)


def test_every_operation_as_device_and_operator(system: RunningSystem, fuzz_replica: str) -> None:
    identities = {"device": register_device(fuzz_replica, f"{system.settings.topic_prefix}fuzz"),
                  "operator": FUZZ_OPERATOR_KEY}
    started = time.monotonic()
    results: list[OperationResult] = fuzz(fuzz_replica, identities, EXAMPLES, progress=print_result,
                                          extra_headers={"X-Forwarded-For": FUZZ_ADDRESS})
    elapsed = time.monotonic() - started
    operations = {r.operation for r in results}
    print(f"fuzzed {len(operations)} operations, {sum(r.examples for r in results)} examples in {elapsed:.0f}s")
    assert len(operations) >= 30, sorted(operations)
    assert all(r.examples > 0 for r in results if r.mode == "positive"), [r for r in results if not r.examples]
    failures = [f for r in results for f in r.failures]
    assert not failures, "\n".join(
        f"{f.operation} as {f.identity} ({f.mode}): {f.message}\n  {f.status} {f.body}\n  {f.reproduce}"
        for f in failures)


def test_hostile_input_to_every_operation_is_a_prompt_4xx_with_the_envelope(fuzz_replica: str) -> None:
    """Odd path ids (traversal, 5,000 characters, NUL, non-UTF-8, 40-digit numbers), odd query values
    and hostile bodies (truncated, wrongly typed, nested 100,000 deep, one byte over the size limit,
    not UTF-8, wrong content type, broken multipart) to every operation: each answer within 10 s, no 5xx
    but 503, and every 4xx in the error envelope."""
    results = hostile(fuzz_replica, FUZZ_OPERATOR_KEY, max_request_bytes=MAX_REQUEST_BYTES, bound_s=HOSTILE_BOUND_S,
                      extra_headers={"X-Forwarded-For": FUZZ_ADDRESS}, progress=print_hostile)
    tried = sum(r.tried for r in results)
    print(f"hostile: {len(results)} operations, {tried} requests, slowest {max(r.slowest_s for r in results):.2f}s")
    assert len(results) >= 30 and all(r.tried > 0 for r in results)
    failures = [f"{r.operation}: {f}" for r in results for f in r.failures]
    assert not failures, "\n".join(failures)
