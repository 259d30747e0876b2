"""The per-key rate limit holds across two ingress replicas: they share the window in Cassandra."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import RunningSystem, client_address

pytestmark = pytest.mark.e2e


def test_limit_is_shared_by_two_replicas(system: RunningSystem, second_replica: str) -> None:
    limit = system.settings.rate_limit_per_minute
    # Stay inside one fixed window: start early in a minute.
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    device_id = f"{system.settings.topic_prefix}rl-device"
    key = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                     headers=client_address()).json()["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    codes: list[int] = []
    retry_after: list[str] = []
    with httpx.Client(timeout=10) as http:
        for i in range(limit + 20):
            base = system.base_url if i % 2 == 0 else second_replica
            response = http.get(f"{base}/api/v1/devices/{device_id}", headers=headers)
            codes.append(response.status_code)
            if response.status_code == 429:
                retry_after.append(response.headers["Retry-After"])
                assert response.json()["error_code"] == "RATE_LIMITED"
    assert codes.count(200) == limit, codes
    assert codes.count(429) == 20
    assert all(1 <= int(value) <= 60 for value in retry_after)
