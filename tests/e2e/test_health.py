"""Detailed health on the running system reflects the real components."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import RunningSystem

pytestmark = pytest.mark.e2e


def test_detailed_health_and_readiness(system: RunningSystem) -> None:
    detailed = httpx.get(f"{system.base_url}/api/v1/health", params={"detailed": "true"}, timeout=10).json()
    components = detailed["components"]
    for name in ("cassandra", "kafka", "s3"):
        assert components[name]["status"] == "healthy", components[name]
    assert components["cassandra"]["detail"].startswith("Cassandra 5.0.")
    assert components["workers"]["status"] in ("healthy", "degraded")
    ready = httpx.get(f"{system.base_url}/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "queue": True}
    assert "tributary_http_requests_total" in httpx.get(f"{system.base_url}/metrics", timeout=10).text
