"""Keys with roles end to end (issue 16), on the real stack: limits per kind of caller, rotation,
revocation across two ingress replicas, device delete, through REST and the CLI, and the audit trail
on the real audit topic."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from core.api_keys import key_id
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import HTTP_TIMEOUT, infer, records_until
from topology.topics import AUDIT_EVENTS, FLEET_EVENTS

pytestmark = pytest.mark.e2e


def operator(system: RunningSystem) -> dict[str, str]:
    return {"Authorization": f"Bearer {system.admin_key}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(system: RunningSystem, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{system.base_url}/api/v1/keys", json=body, headers=operator(system), timeout=30)
    assert response.status_code == 201, response.text
    return dict(response.json())


def register(system: RunningSystem) -> tuple[str, str]:
    device_id = f"{system.settings.topic_prefix}keys-{uuid.uuid4().hex[:8]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=30)
    assert response.status_code == 201, response.text
    return device_id, response.json()["api_key"]


def cli(system: RunningSystem, *args: str) -> Any:
    """``tributary <args> --json`` against the session's ingress, as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "cli", *args, "--url", system.base_url, "--api-key",
                           system.admin_key, "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def start_early_in_a_minute() -> None:
    """Fixed one-minute windows: start a counted run early in one so it stays inside it."""
    if time.time() % 60 > 30:
        time.sleep(61 - time.time() % 60)


def test_a_service_key_runs_1000_inferences_in_under_a_minute_without_429(system: RunningSystem) -> None:
    service = bearer(create_key(system, role="service", label="e2e inference")["api_key"])
    assert infer(system.base_url, service, "warm up").status_code == 200  # worker join and model load
    start_early_in_a_minute()
    with httpx.Client(timeout=HTTP_TIMEOUT, limits=httpx.Limits(max_connections=16)) as http:
        def one(i: int) -> int:
            response = http.post(f"{system.base_url}/api/v1/infer/sentence-transformers%2Fall-MiniLM-L6-v2",
                                 json={"input_data": {"text": f"request {i}"}, "priority": "high"}, headers=service)
            return response.status_code

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(1000)))
        elapsed = time.monotonic() - started
    assert codes.count(429) == 0
    assert codes == [200] * 1000, {c: codes.count(c) for c in set(codes)}
    assert elapsed < 60, f"1000 inferences took {elapsed:.1f}s"


def test_a_device_key_gets_429_at_request_101_in_a_minute(system: RunningSystem) -> None:
    device_id, key = register(system)
    start_early_in_a_minute()
    with httpx.Client(timeout=30) as http:
        codes = [http.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=bearer(key)).status_code
                 for _ in range(101)]
        refused = http.get(f"{system.base_url}/api/v1/devices/{device_id}", headers=bearer(key))
    assert codes[:100] == [200] * 100 and codes[100] == 429
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60


def test_rotation_through_rest_and_the_cli_old_key_401_new_key_200(system: RunningSystem) -> None:
    created = create_key(system, role="service", label="rotate me")
    status = f"{system.base_url}/api/v1/status"
    assert httpx.get(status, headers=bearer(created["api_key"]), timeout=30).status_code == 200
    rotated = httpx.post(f"{system.base_url}/api/v1/keys/{created['key_id']}/rotate", headers=operator(system),
                         timeout=30).json()
    assert rotated["propagation"]["confirmed"] is True
    assert httpx.get(status, headers=bearer(created["api_key"]), timeout=30).status_code == 401
    assert httpx.get(status, headers=bearer(rotated["api_key"]), timeout=30).status_code == 200
    # the CLI: same again on the new key
    by_cli = cli(system, "keys", "rotate", rotated["key_id"])
    assert by_cli["revoked_key_ids"] == [rotated["key_id"]] and by_cli["label"] == "rotate me"
    assert httpx.get(status, headers=bearer(rotated["api_key"]), timeout=30).status_code == 401
    assert httpx.get(status, headers=bearer(by_cli["api_key"]), timeout=30).status_code == 200
    listed = {k["key_id"]: k for k in cli(system, "keys", "list", "--subject", "rotate me")}
    assert listed[created["key_id"]]["revoked_at"] and listed[rotated["key_id"]]["revoked_at"]
    assert listed[by_cli["key_id"]]["revoked_at"] is None
    assert "api_key" not in json.dumps(list(listed.values()))


def test_a_device_rotates_its_own_key(system: RunningSystem) -> None:
    device_id, key = register(system)
    rotated = httpx.post(f"{system.base_url}/api/v1/devices/{device_id}/keys/rotate", headers=bearer(key), timeout=30)
    assert rotated.status_code == 201, rotated.text
    url = f"{system.base_url}/api/v1/devices/{device_id}"
    assert httpx.get(url, headers=bearer(key), timeout=30).status_code == 401
    assert httpx.get(url, headers=bearer(rotated.json()["api_key"]), timeout=30).status_code == 200


def test_a_revocation_on_replica_a_holds_for_the_very_next_request_on_replica_b(
        system: RunningSystem, second_replica: str) -> None:
    created = create_key(system, role="service", label="two replicas")
    key = bearer(created["api_key"])
    with httpx.Client(timeout=30) as http:
        for _ in range(3):  # B now answers this key from its cache
            assert http.get(f"{second_replica}/api/v1/status", headers=key).status_code == 200
        revoked = http.post(f"{system.base_url}/api/v1/keys/{created['key_id']}/revoke", headers=operator(system))
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["propagation"]["confirmed"] is True
        assert revoked.json()["propagation"]["replicas"] >= 2
        after = http.get(f"{second_replica}/api/v1/status", headers=key)
    assert after.status_code == 401 and "revoked" in after.json()["message"]


def test_deleting_a_device_through_the_cli_stops_its_key_on_every_replica(
        system: RunningSystem, second_replica: str) -> None:
    device_id, key = register(system)
    with httpx.Client(timeout=30) as http:
        assert http.get(f"{second_replica}/api/v1/devices/{device_id}", headers=bearer(key)).status_code == 200
        deleted = cli(system, "devices", "delete", device_id)
        assert deleted["device_id"] == device_id and deleted["propagation"]["confirmed"] is True
        assert http.get(f"{second_replica}/api/v1/devices/{device_id}", headers=bearer(key)).status_code == 401
        assert http.get(f"{system.base_url}/api/v1/devices/{device_id}",
                        headers=operator(system)).status_code == 404
    events = records_until(system.settings, FLEET_EVENTS,
                           lambda r: r["event_type"] == "device_deleted" and r["subject_id"] == device_id,
                           lambda found: bool(found), timeout_s=30)
    assert events and events[0]["details"]["revoked_key_ids"] == [deleted["revoked"][0]["key_id"]]


def test_key_and_device_management_through_the_cli_is_on_the_audit_topic_with_the_actor_s_key_id(
        system: RunningSystem) -> None:
    device_id, _ = register(system)
    created = cli(system, "keys", "create", "--role", "service", "--label", "audited", "--rate-limit", "500")
    assert created["rate_limit_per_minute"] == 500 and created["api_key"].startswith("sk_live_")
    revoked = cli(system, "keys", "revoke", created["key_id"])
    assert revoked["propagation"]["confirmed"] is True
    status = httpx.get(f"{system.base_url}/api/v1/status", headers=bearer(created["api_key"]), timeout=30)
    assert status.status_code == 401
    httpx.delete(f"{system.base_url}/api/v1/devices/{device_id}", headers=operator(system), timeout=30)
    wanted = {("key.create", f"key/{created['key_id']}"), ("key.revoke", f"key/{created['key_id']}"),
              ("device.delete", f"device/{device_id}")}
    records = records_until(system.settings, AUDIT_EVENTS, lambda r: (r["action"], r["subject"]) in wanted,
                            lambda found: len(found) >= len(wanted), timeout_s=30)
    assert {(r["action"], r["subject"]) for r in records} == wanted
    assert {r["actor"] for r in records} == {key_id(system.admin_key)}
    assert "sk_live_" not in json.dumps(records, default=str)
