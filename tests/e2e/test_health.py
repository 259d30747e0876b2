"""Detailed health on the running system reflects the real components: exactly `healthy` when every
process runs (every declared consumer group has a member), `degraded` while one worker group has none."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import RunningSystem
from topology.groups import GROUPS, inference_group
from topology.topics import Priority

pytestmark = pytest.mark.e2e

# Members join their groups within seconds of starting; a faust app or a worker that has just
# (re)started may take longer on a busy machine.
JOIN_BOUND_S = 90.0


def detailed(system: RunningSystem) -> dict[str, Any]:
    response = httpx.get(f"{system.base_url}/api/v1/health", params={"detailed": "true"}, timeout=10)
    assert response.status_code == 200, response.text  # 503 only when a component is unhealthy
    body: dict[str, Any] = response.json()
    return body


def wait_for(system: RunningSystem, status: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body = detailed(system)
    while body["status"] != status and time.monotonic() < deadline:
        time.sleep(1.0)
        body = detailed(system)
    assert body["status"] == status, body["components"]
    return body


def test_detailed_health_is_healthy_with_the_full_system_running(system: RunningSystem) -> None:
    body = wait_for(system, "healthy", JOIN_BOUND_S)
    components = body["components"]
    assert {name: c["status"] for name, c in components.items()} == {
        "cassandra": "healthy", "kafka": "healthy", "s3": "healthy", "workers": "healthy",
        "inference_replies": "healthy"}
    assert components["cassandra"]["detail"].startswith("Cassandra 5.0.")
    # every declared group but the ingress's own (this process is its member) has a member
    assert components["workers"]["detail"] == f"{len(GROUPS) - 1} groups have members"


def test_detailed_health_is_degraded_while_one_worker_group_has_no_member(system: RunningSystem) -> None:
    wait_for(system, "healthy", JOIN_BOUND_S)
    name = f"inference-worker-{Priority.LOW.value}"
    group_id = inference_group(Priority.LOW).full_id(system.settings)
    assert system.supervisor.stop_service(name) == 0  # graceful: it leaves the group at once
    try:
        body = wait_for(system, "degraded", 30)
        statuses = {n: c["status"] for n, c in body["components"].items()}
        assert statuses.pop("workers") == "degraded" and set(statuses.values()) == {"healthy"}
        assert body["components"]["workers"]["detail"] == f"no live members in {group_id}"
    finally:
        system.supervisor.start_service(name)
    wait_for(system, "healthy", JOIN_BOUND_S)


def test_readiness_and_metrics(system: RunningSystem) -> None:
    ready = httpx.get(f"{system.base_url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "queue": True}
    assert "tributary_http_requests_total" in httpx.get(f"{system.base_url}/metrics", timeout=10).text
