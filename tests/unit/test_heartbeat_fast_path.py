"""``api.hot_path.HeartbeatFastPath`` answers exactly as the FastAPI route does, and only takes what it
can: every other request reaches the route with its body intact."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr

import api.hot_path
import api.routers.fleet
from api.app import create_app
from api.context import AppContext
from core.api_keys import new_api_key
from settings import Settings
from tests.memory_app import memory_context

pytestmark = pytest.mark.unit
ADMIN = new_api_key()
VOLATILE = ("timestamp", "trace_id", "last_heartbeat")


@pytest.fixture
def ctx() -> AppContext:
    return memory_context(Settings(admin_api_key=SecretStr(ADMIN), rate_limit_per_minute=1000))


@pytest.fixture
def clients(ctx: AppContext) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path on, fast path off) over one context: same keys, devices and limits."""
    slow = ctx.settings.model_copy(update={"api_heartbeat_fast_path": False})
    with TestClient(create_app(ctx.settings, ctx)) as fast, TestClient(create_app(slow, ctx)) as route:
        yield fast, route


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Device ids the fast path answered itself."""
    calls: list[str] = []
    original = api.routers.fleet.answer_heartbeat

    async def counting(ctx: AppContext, caller: Any, device_id: str, body: Any) -> Any:
        calls.append(device_id)
        return await original(ctx, caller, device_id, body)

    monkeypatch.setattr(api.hot_path, "answer_heartbeat", counting)
    return calls


def register(client: TestClient, device_id: str) -> str:
    response = client.post("/api/v1/devices/register", json={"device_id": device_id})
    assert response.status_code == 201, response.text
    key: str = response.json()["api_key"]
    return key


def comparable(response: Any) -> tuple[int, Any, str | None]:
    body = response.json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, body, response.headers.get("retry-after")


def test_a_well_formed_heartbeat_is_served_by_the_fast_path_with_the_routes_answer(
        clients: tuple[TestClient, TestClient], served: list[str]) -> None:
    fast, route = clients
    key = register(fast, "dev-a")
    for body in ({"status": "active", "metrics": {"battery_level": 80, "nested": {"a": [1, 2]}}},
                 {"status": "inactive"}, {}, None):
        kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {key}"}}
        if body is not None:
            kwargs["json"] = body
        answered = fast.put("/api/v1/devices/dev-a/heartbeat", **kwargs)
        reference = route.put("/api/v1/devices/dev-a/heartbeat", **kwargs)
        assert answered.status_code == 200, answered.text
        assert comparable(answered) == comparable(reference)
        assert set(answered.json()) == set(reference.json())
        assert answered.headers["x-trace-id"]  # the trace middleware still wraps it
    assert served == ["dev-a"] * 4
    # HTTPBearer's reading of the header, spaces and scheme case included
    for header in (f"Bearer  {key}", f"bearer {key} "):
        answered = fast.put("/api/v1/devices/dev-a/heartbeat", json={}, headers={"Authorization": header})
        reference = route.put("/api/v1/devices/dev-a/heartbeat", json={}, headers={"Authorization": header})
        assert answered.status_code == reference.status_code == 200, answered.text
    assert served == ["dev-a"] * 6


@pytest.mark.parametrize(("label", "path", "content", "headers"), [
    ("unknown field", "/api/v1/devices/dev-b/heartbeat", b'{"status": "active", "extra": 1}', {}),
    ("bad status", "/api/v1/devices/dev-b/heartbeat", b'{"status": "asleep"}', {}),
    ("metrics not an object", "/api/v1/devices/dev-b/heartbeat", b'{"metrics": [1]}', {}),
    ("not JSON", "/api/v1/devices/dev-b/heartbeat", b'{"status": ', {}),
    ("JSON null", "/api/v1/devices/dev-b/heartbeat", b"null", {}),
    ("NaN", "/api/v1/devices/dev-b/heartbeat", b'{"metrics": {"x": NaN}}', {}),
    ("text body", "/api/v1/devices/dev-b/heartbeat", b"status=active", {"content-type": "text/plain"}),
    ("device id too long", "/api/v1/devices/" + "d" * 256 + "/heartbeat", b"{}", {}),
])
def test_what_the_fast_path_does_not_take_gets_the_routes_own_answer(
        clients: tuple[TestClient, TestClient], served: list[str], label: str, path: str, content: bytes,
        headers: dict[str, str]) -> None:
    fast, route = clients
    key = register(fast, "dev-b")
    sent = {"content-type": "application/json", **headers, "Authorization": f"Bearer {key}"}
    answered = fast.put(path, content=content, headers=sent)
    reference = route.put(path, content=content, headers=sent)
    # (the route takes a JSON null body as no body, and json.loads's NaN; everything else here it refuses)
    assert (answered.status_code == 200) == (label in ("JSON null", "NaN")), label
    assert comparable(answered) == comparable(reference), label
    assert served == []


def test_refusals_are_the_routes_envelopes(clients: tuple[TestClient, TestClient], served: list[str]) -> None:
    fast, route = clients
    key_c, key_d = register(fast, "dev-c"), register(fast, "dev-d")
    for headers in ({}, {"Authorization": "Bearer sk_live_" + "x" * 32}, {"Authorization": f"Basic {key_c}"},
                    {"Authorization": f"Bearer {key_d}"}):
        answered = fast.put("/api/v1/devices/dev-c/heartbeat", json={}, headers=headers)
        reference = route.put("/api/v1/devices/dev-c/heartbeat", json={}, headers=headers)
        assert answered.status_code in (401, 403), answered.text
        assert comparable(answered) == comparable(reference)
        assert answered.json()["trace_id"] == answered.headers["x-trace-id"]
    # Admission refused the first three; the other device's key is admitted and the core refuses it.
    assert served == ["dev-c"]


def test_a_key_over_its_limit_gets_429_with_retry_after_on_both_paths(ctx: AppContext) -> None:
    limited = ctx.settings.model_copy(update={"rate_limit_per_minute": 3})
    for fast_path in (True, False):
        settings = limited.model_copy(update={"api_heartbeat_fast_path": fast_path})
        with TestClient(create_app(settings, memory_context(settings))) as client:
            key = register(client, "dev-e")
            codes = [client.put("/api/v1/devices/dev-e/heartbeat", json={},
                                headers={"Authorization": f"Bearer {key}"}) for _ in range(4)]
            assert [c.status_code for c in codes] == [200, 200, 200, 429], fast_path
            assert codes[-1].json()["error_code"] and int(codes[-1].headers["retry-after"]) >= 1


def test_fast_path_requests_are_counted_under_the_route_template(
        clients: tuple[TestClient, TestClient], served: list[str]) -> None:
    fast, _ = clients
    key = register(fast, "dev-f")
    labels = {"method": "PUT", "route": "/api/v1/devices/{device_id}/heartbeat", "status": "200"}
    before = REGISTRY.get_sample_value("tributary_http_requests_total", labels) or 0.0
    assert fast.put("/api/v1/devices/dev-f/heartbeat", json={}, headers={"Authorization": f"Bearer {key}"}).is_success
    assert served == ["dev-f"]
    assert REGISTRY.get_sample_value("tributary_http_requests_total", labels) == before + 1
