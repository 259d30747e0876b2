"""Fleet state the devices reported: their status is stored and used (an inactive device is never
selected for a round), their last metrics are readable, operators list the fleet with filters and
pages, and /status says degraded when a component is down (issue 15, item 2)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.fleet.memory_store import InMemoryFleetStore
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.unit.test_fleet_api import ADMIN, auth, register

pytestmark = pytest.mark.unit


@pytest.fixture
def ctx() -> AppContext:
    settings = Settings(admin_api_key=SecretStr(ADMIN), rate_limit_per_minute=1000)
    return memory_context(settings)


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def beat(ctx: AppContext, device_id: str, status: str, at: datetime | None = None, **metrics: float) -> None:
    """What the device processor does with a heartbeat (the unit app has no processor)."""
    assert ctx.store.record_heartbeat(device_id, at or datetime.now(UTC), status, metrics) is not None


def test_an_inactive_device_is_never_selected_for_a_round(api: TestClient, ctx: AppContext) -> None:
    active, _ = register(api)
    inactive, _ = register(api)
    silent, _ = register(api)  # registered, never beat: offline
    beat(ctx, active, "active")
    beat(ctx, inactive, "inactive")
    response = api.post("/api/v1/training/rounds/start", headers=auth(ADMIN),
                        json={"target_devices": 3, "min_devices": 1, "timeout_seconds": 60})
    assert response.status_code == 201, response.text
    round_ = ctx.store.get_round(response.json()["id"])
    assert round_ is not None and round_.selected_devices == [active]
    assert silent not in round_.selected_devices


def test_a_device_reads_its_reported_status_and_last_metrics(api: TestClient, ctx: AppContext) -> None:
    device_id, key = register(api)
    beat(ctx, device_id, "inactive", battery_level=12, cpu_usage_percent=3.5)
    device = api.get(f"/api/v1/devices/{device_id}", headers=auth(key)).json()
    assert device["status"] == "inactive"
    assert device["metrics"] == {"battery_level": 12, "cpu_usage_percent": 3.5}
    # No heartbeat for over five intervals: the server says offline, whatever was reported last.
    store = ctx.store
    assert isinstance(store, InMemoryFleetStore)
    store.devices[device_id].last_heartbeat = datetime.now(UTC) - timedelta(
        seconds=6 * ctx.settings.heartbeat_interval_s)
    assert api.get(f"/api/v1/devices/{device_id}", headers=auth(key)).json()["status"] == "offline"


def test_operators_list_the_fleet_with_filters_and_pages(api: TestClient, ctx: AppContext) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(hours=2)
    reported = {"active": [], "inactive": [], "offline": []}  # type: dict[str, list[str]]
    for status in ("active", "active", "active", "inactive", "inactive"):
        device_id, _ = register(api)
        beat(ctx, device_id, status)
        reported[status].append(device_id)
    gone, gone_key = register(api)
    beat(ctx, gone, "active", at=old)
    reported["offline"].append(gone)

    def listed(**params: object) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            query = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = api.get("/api/v1/devices", headers=auth(ADMIN), params=query)
            assert page.status_code == 200, page.text
            body = page.json()
            assert len(body["devices"]) <= 2
            ids += [d["device_id"] for d in body["devices"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return sorted(ids)

    everyone = sorted(d for ids in reported.values() for d in ids)
    assert listed() == everyone
    for status, ids in reported.items():
        assert listed(status=status) == sorted(ids), status
    assert listed(platform="python") == everyone and listed(platform="ios") == []
    assert listed(last_heartbeat_before=(now - timedelta(hours=1)).isoformat()) == [gone]

    assert api.get("/api/v1/devices", headers=auth(gone_key)).status_code == 403  # operators only
    assert api.get("/api/v1/devices", headers=auth(ADMIN), params={"status": "training"}).status_code == 400
    assert api.get("/api/v1/devices", headers=auth(ADMIN), params={"limit": 0}).status_code == 400


def test_status_says_degraded_when_a_component_is_down(api: TestClient, ctx: AppContext) -> None:
    ctx.probes["cassandra"] = lambda: "Cassandra 5.0.6"
    healthy = api.get("/api/v1/status", headers=auth(ADMIN)).json()
    assert healthy["status"] == "operational"
    assert healthy["version"] and healthy["uptime_seconds"] >= 0  # seed 001's system fields

    def down() -> str:
        raise ConnectionError("no Cassandra")

    ctx.probes["cassandra"] = down
    assert api.get("/api/v1/status", headers=auth(ADMIN)).json()["status"] == "degraded"
