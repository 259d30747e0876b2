"""The per-key rate limit holds across two ingress replicas: they share the window in Cassandra."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from core.services import system_services
from core.settings import Settings
from core.supervisor import Supervisor
from tests.e2e.conftest import RunningSystem, free_port, settings_env, wait_http

pytestmark = pytest.mark.e2e


@pytest.fixture
def second_replica(system: RunningSystem) -> Iterator[str]:
    replica: Settings = system.settings.model_copy(update={"api_port": free_port()})
    api = [s for s in system_services(replica, settings_env(replica)) if s.name == "api"]
    supervisor = Supervisor(api, system.log_dir / "replica-2", progress=lambda _: None)
    supervisor.start()
    url = f"http://127.0.0.1:{replica.api_port}"
    try:
        wait_http(f"{url}/api/v1/health")
        yield url
    finally:
        supervisor.stop()


def test_limit_is_shared_by_two_replicas(system: RunningSystem, second_replica: str) -> None:
    limit = system.settings.rate_limit_per_minute
    # Stay inside one fixed window: start early in a minute.
    if time.time() % 60 > 40:
        time.sleep(61 - time.time() % 60)
    device_id = f"{system.settings.topic_prefix}rl-device"
    key = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id}).json()["api_key"]
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
