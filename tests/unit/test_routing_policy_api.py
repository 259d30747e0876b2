"""``GET/PUT /api/v1/models/{id}/routing-policy``: operators set a model's routing policy (audited),
anyone with a key reads it with the defaults filled in, and bad input is a 4xx in the envelope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.routing import RoutingMode, RoutingPolicy
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": f"Bearer {(ADMIN_KEY := new_api_key())}"}
MODEL = {"model_id": "acme/tiny-embed", "task_type": "txt2embed", "resource_requirements": {"memory_mb": 300}}
PATH = "/api/v1/models/acme/tiny-embed/routing-policy"


@pytest.fixture
def ctx() -> AppContext:
    return memory_context(Settings(admin_api_key=SecretStr(ADMIN_KEY), routing_min_battery_pct=15,
                                   routing_download_networks="wifi", routing_memory_headroom=1.25))


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        assert client.post("/api/v1/models", json=MODEL, headers=ADMIN).status_code == 201
        yield client


def test_a_model_without_a_policy_shows_the_defaults(api: TestClient) -> None:
    got = api.get(PATH, headers=ADMIN)
    assert got.status_code == 200, got.text
    assert got.json() == {"model_id": "acme/tiny-embed", "overrides": {"mode": "auto"}, "memory_mb": 300,
                          "policy": {"mode": "auto", "min_battery_pct": 15, "download_networks": ["wifi"],
                                     "memory_headroom": 1.25, "platforms": None}}


def test_operator_sets_the_policy_it_is_stored_audited_and_read_back(api: TestClient, ctx: AppContext) -> None:
    body = {"min_battery_pct": 40, "download_networks": ["wifi", "cellular"], "platforms": ["android"]}
    put = api.put(PATH, json=body, headers=ADMIN)
    assert put.status_code == 200, put.text
    assert put.json()["policy"] == {"mode": "auto", "min_battery_pct": 40, "download_networks": ["wifi", "cellular"],
                                    "memory_headroom": 1.25, "platforms": ["android"]}
    stored = ctx.store.get_model("acme/tiny-embed")
    assert stored is not None
    assert RoutingPolicy.of(stored.extra["routing_policy"]) == RoutingPolicy(
        min_battery_pct=40, download_networks=("wifi", "cellular"), platforms=("android",))
    assert api.get(PATH.replace("acme/", "acme%2F"), headers=ADMIN).json() == put.json()
    events = ctx.events
    assert isinstance(events, RecordingSink)
    [audit] = [a for a in events.audits if a["action"] == "model.routing_policy.update"]
    assert audit["subject"] == "model/acme/tiny-embed" and audit["after"]["min_battery_pct"] == 40

    # PUT replaces the whole policy: what is left out goes back to the default
    again = api.put(PATH, json={"mode": "cloud_only"}, headers=ADMIN).json()
    assert again["overrides"] == {"mode": "cloud_only"} and again["policy"]["min_battery_pct"] == 15
    stored = ctx.store.get_model("acme/tiny-embed")
    assert stored is not None and RoutingPolicy.of(stored.extra["routing_policy"]).mode is RoutingMode.CLOUD_ONLY


def test_the_policy_route_does_not_swallow_the_model_itself(api: TestClient) -> None:
    api.put(PATH, json={"min_battery_pct": 30}, headers=ADMIN)
    model = api.get("/api/v1/models/acme/tiny-embed", headers=ADMIN)
    assert model.status_code == 200 and model.json()["model_id"] == "acme/tiny-embed"


@pytest.mark.parametrize("body", [
    {"min_battery_pct": 101}, {"min_battery_pct": -1}, {"memory_headroom": 0.5}, {"download_networks": ["5g"]},
    {"platforms": ["windows"]}, {"mode": "sometimes"}, {"unknown": 1}, [], "wifi",
])
def test_bad_policies_are_a_400_in_the_envelope(api: TestClient, body: object) -> None:
    got = api.put(PATH, json=body, headers=ADMIN)
    assert got.status_code == 400, got.text
    assert {"error", "error_code", "message", "status_code"} <= set(got.json())


def test_unknown_model_is_a_404(api: TestClient) -> None:
    got = api.put("/api/v1/models/acme/nothing/routing-policy", json={}, headers=ADMIN)
    assert got.status_code == 404 and got.json()["error_code"] == "MODEL_NOT_FOUND"


def test_a_device_reads_the_policy_but_may_not_change_it(api: TestClient) -> None:
    device = api.post("/api/v1/devices/register", json={"device_id": "phone-1"}).json()
    key = {"Authorization": f"Bearer {device['api_key']}"}
    assert api.get(PATH, headers=key).status_code == 200
    assert api.put(PATH, json={"mode": "cloud_only"}, headers=key).status_code == 403
