"""Health endpoints: basic (seed 000), detailed with 503 (seed 004), probes (seed 001), metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.health import degraded
from core.serving.metrics import observe_reply
from settings import Settings
from tests.memory_app import memory_context

pytestmark = pytest.mark.unit


def make_client(probes: dict[str, object]) -> TestClient:
    ctx = memory_context(Settings(), probes=probes)
    return TestClient(create_app(ctx.settings, ctx))


def broken() -> str:
    raise ConnectionError("connection refused")


def test_basic_health_is_fast_and_open() -> None:
    with make_client({"cassandra": broken}) as api:
        body = api.get("/api/v1/health").json()
        assert body["status"] == "healthy" and body["version"] and body["timestamp"].endswith("Z")
        assert api.get("/health/live").json() == {"status": "ok"}


def test_detailed_health_is_503_when_a_component_is_down() -> None:
    with make_client({"cassandra": broken, "kafka": lambda: "ok", "workers": lambda: degraded("none")}) as api:
        response = api.get("/api/v1/health?detailed=true")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert body["components"]["cassandra"]["status"] == "unhealthy"
        assert "connection refused" in body["components"]["cassandra"]["detail"]
        assert body["components"]["kafka"]["status"] == "healthy"
        assert body["components"]["workers"]["status"] == "degraded"
        ready = api.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"] == {"database": False, "queue": True}


def test_degraded_is_still_200() -> None:
    with make_client({"kafka": lambda: "ok", "workers": lambda: degraded("no members")}) as api:
        response = api.get("/api/v1/health?detailed=true")
        assert response.status_code == 200 and response.json()["status"] == "degraded"
        assert api.get("/health/ready").json() == {"status": "ready", "checks": {"database": True, "queue": True}}


def test_metrics_count_requests_by_route_template() -> None:
    with make_client({}) as api:
        api.get("/api/v1/devices/some-device")  # 401, route template recorded
        text = api.get("/metrics").text
        assert 'tributary_http_requests_total{method="GET",route="/api/v1/devices/{device_id}",status="401"}' in text
        assert "tributary_http_request_duration_seconds_bucket" in text


def test_seed_001_paths_and_metric_names_answer_under_api_v1() -> None:
    """Seed 001's base path is /api/v1 and its dashboard reads modelmora_* metrics."""
    observe_reply("all-MiniLM-L6-v2", "high", "success", 0.012, {})
    observe_reply("all-MiniLM-L6-v2", "high", "INFERENCE_TIMEOUT", 0.5, {})
    with make_client({"cassandra": lambda: "ok"}) as api:
        assert api.get("/api/v1/health/live").json() == api.get("/health/live").json() == {"status": "ok"}
        ready = api.get("/api/v1/health/ready")
        assert ready.status_code == 200 and ready.json() == api.get("/health/ready").json()
        assert api.get("/api/v1/health/models").json() == api.get("/health/models").json()
        metrics = api.get("/api/v1/metrics").text
    assert 'modelmora_requests_total{model_id="all-MiniLM-L6-v2",status="success"}' in metrics
    assert 'modelmora_requests_total{model_id="all-MiniLM-L6-v2",status="error"}' in metrics
    assert 'modelmora_inference_duration_seconds_bucket{le="0.1",model_id="all-MiniLM-L6-v2"}' in metrics
