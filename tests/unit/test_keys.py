"""Key management through the real app on in-memory stores: roles, rotation, revocation, device
delete, per-key limits, the lookup cache and its audit trail (the Kafka bus and two replicas are in
tests/e2e/test_keys.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from api.forwarded import ForwardedHeader, TrustedProxies, forwarded_for
from core.api_keys import new_api_key
from core.auth import Authenticator, KeyEvent, Propagation
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import RoundStatus, SubjectType
from core.keys import KeyService
from schemas.clock import utcnow
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink
from tests.store_contract import make_round, make_update

pytestmark = pytest.mark.unit

ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"admin_api_key": SecretStr(ADMIN_KEY), "rate_limit_per_minute": 1000}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def app() -> Iterator[tuple[AppContext, TestClient]]:
    ctx = memory_context(make_settings())
    with app_client(ctx) as client:
        yield ctx, client


def register(client: TestClient) -> tuple[str, str]:
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    response = client.post("/api/v1/devices/register", json={"device_id": device_id})
    assert response.status_code == 201
    return device_id, response.json()["api_key"]


def create(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post("/api/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_an_operator_creates_a_service_key_that_serves_but_does_not_manage(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    created = create(client, role="service", label="search backend")
    assert created["role"] == "service" and created["subject"] == "search backend"
    assert created["created_by"] == ctx.authenticator.admin_key_id
    assert str(created["api_key"]).startswith("sk_live_")
    service = bearer(str(created["api_key"]))
    assert client.get("/api/v1/status", headers=service).status_code == 200
    assert client.get("/api/v1/models", headers=service).status_code == 200
    assert client.get("/api/v1/devices", headers=service).status_code == 403
    assert client.post("/api/v1/keys", json={"role": "operator"}, headers=service).status_code == 403


def test_a_key_list_never_shows_a_key_or_its_hash(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    created = create(client, role="operator", label="alice", rate_limit_per_minute=500)
    listed = client.get("/api/v1/keys", headers=ADMIN)
    assert listed.status_code == 200
    (row,) = [k for k in listed.json()["keys"] if k["key_id"] == created["key_id"]]
    assert row == {"key_id": created["key_id"], "role": "operator", "subject": "alice", "label": "alice",
                   "created_at": created["created_at"], "created_by": ctx.authenticator.admin_key_id,
                   "revoked_at": None, "rate_limit_per_minute": 500}
    text = listed.text
    assert "sk_live_" not in text
    stored = ctx.store.get_api_key(next(h for h, k in ctx.store.keys.items()  # type: ignore[attr-defined]
                                        if k.key_id == created["key_id"]))
    assert stored is not None and stored.key_hash not in text


def test_a_device_key_needs_its_device(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    response = client.post("/api/v1/keys", json={"role": "device", "subject": "nobody"}, headers=ADMIN)
    assert response.status_code == 404 and response.json()["error_code"] == "DEVICE_NOT_FOUND"


def test_a_device_that_lost_its_key_gets_a_new_one_from_an_operator(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    device_id, _lost = register(client)
    issued = create(client, role="device", subject=device_id)
    assert client.get(f"/api/v1/devices/{device_id}", headers=bearer(str(issued["api_key"]))).status_code == 200


def test_rotation_revokes_the_old_key_at_once(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    created = create(client, role="service", label="svc", rate_limit_per_minute=777)
    old = bearer(str(created["api_key"]))
    assert client.get("/api/v1/status", headers=old).status_code == 200  # cached now
    rotated = client.post(f"/api/v1/keys/{created['key_id']}/rotate", headers=ADMIN)
    assert rotated.status_code == 201, rotated.text
    body = rotated.json()
    assert body["revoked_key_ids"] == [created["key_id"]] and body["propagation"]["confirmed"] is True
    assert body["role"] == "service" and body["label"] == "svc" and body["rate_limit_per_minute"] == 777
    assert client.get("/api/v1/status", headers=old).status_code == 401
    assert client.get("/api/v1/status", headers=bearer(body["api_key"])).status_code == 200
    again = client.post(f"/api/v1/keys/{created['key_id']}/rotate", headers=ADMIN)
    assert again.status_code == 409 and again.json()["error_code"] == "KEY_REVOKED"


def test_revocation_holds_at_once_and_repeats_safely(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    created = create(client, role="service")
    key = bearer(str(created["api_key"]))
    assert client.get("/api/v1/status", headers=key).status_code == 200
    revoked = client.post(f"/api/v1/keys/{created['key_id']}/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked"][0]["revoked_at"] is not None
    response = client.get("/api/v1/status", headers=key)
    assert response.status_code == 401 and "revoked" in response.json()["message"]
    assert client.delete(f"/api/v1/keys/{created['key_id']}", headers=ADMIN).status_code == 200
    listed = {k["key_id"]: k for k in client.get("/api/v1/keys", headers=ADMIN).json()["keys"]}
    assert listed[str(created["key_id"])]["revoked_at"] is not None


def test_the_environment_operator_key_is_not_managed_here(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    response = client.post(f"/api/v1/keys/{ctx.authenticator.admin_key_id}/revoke", headers=ADMIN)
    assert response.status_code == 409 and response.json()["error_code"] == "CONFIGURED_KEY"
    assert client.post("/api/v1/keys/key_0000000000000000/revoke", headers=ADMIN).status_code == 404


def test_a_device_rotates_its_own_key_and_no_one_else_s(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    device_id, key = register(client)
    other_id, other_key = register(client)
    assert client.post(f"/api/v1/devices/{other_id}/keys/rotate", headers=bearer(key)).status_code == 403
    rotated = client.post(f"/api/v1/devices/{device_id}/keys/rotate", headers=bearer(key))
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["api_key"]
    assert rotated.json()["role"] == "device" and rotated.json()["subject"] == device_id
    assert client.get(f"/api/v1/devices/{device_id}", headers=bearer(key)).status_code == 401
    assert client.get(f"/api/v1/devices/{device_id}", headers=bearer(new_key)).status_code == 200
    assert client.get(f"/api/v1/devices/{other_id}", headers=bearer(other_key)).status_code == 200


def test_deleting_a_device_removes_it_and_its_keys_and_announces_it(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    device_id, key = register(client)
    assert client.get(f"/api/v1/devices/{device_id}", headers=bearer(key)).status_code == 200
    deleted = client.delete(f"/api/v1/devices/{device_id}", headers=ADMIN)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["device_id"] == device_id and len(deleted.json()["revoked"]) == 1
    assert client.get(f"/api/v1/devices/{device_id}", headers=bearer(key)).status_code == 401
    assert client.get(f"/api/v1/devices/{device_id}", headers=ADMIN).status_code == 404
    assert client.delete(f"/api/v1/devices/{device_id}", headers=ADMIN).status_code == 404
    sink = ctx.events
    assert isinstance(sink, RecordingSink)
    (event,) = [e for e in sink.of_type("fleet_event") if e["event_type"] == "device_deleted"]
    assert event["subject_id"] == device_id
    assert client.post("/api/v1/devices/register", json={"device_id": device_id}).status_code == 201


def test_deleting_a_device_withdraws_its_update_from_the_round_in_progress(
        app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    device_id, _ = register(client)
    round_ = make_round(target_devices=2, min_devices=1)
    ctx.store.create_active_round(round_)
    ctx.store.transition_round(round_.id, RoundStatus.PENDING, RoundStatus.ACTIVE, selected_devices=[device_id])
    update = make_update(round_.id, device_id)
    kept = make_update(round_.id, "another-device")
    assert ctx.store.add_update(update) and ctx.store.add_update(kept)
    assert client.delete(f"/api/v1/devices/{device_id}", headers=ADMIN).status_code == 200
    assert [u.id for u in ctx.store.list_updates(round_.id)] == [kept.id]
    sink = ctx.events
    assert isinstance(sink, RecordingSink)
    (event,) = [e for e in sink.of_type("fleet_event") if e["event_type"] == "device_deleted"]
    assert event["details"]["withdrawn_update_ids"] == [update.id]


def test_every_management_action_is_audited_with_the_actor_s_key_id_and_never_a_key(
        app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    device_id, key = register(client)
    created = create(client, role="service")
    client.get("/api/v1/keys", headers=ADMIN)
    client.post(f"/api/v1/keys/{created['key_id']}/rotate", headers=ADMIN)
    client.post(f"/api/v1/devices/{device_id}/keys/rotate", headers=bearer(key))
    client.delete(f"/api/v1/devices/{device_id}", headers=ADMIN)
    sink = ctx.events
    assert isinstance(sink, RecordingSink)
    actions = {a["action"]: a for a in sink.audits}
    admin_id = ctx.authenticator.admin_key_id
    for action in ("key.create", "key.list", "key.rotate", "device.delete"):
        assert actions[action]["actor"] == admin_id, action
    assert actions["device.key.rotate"]["actor"] != admin_id
    assert actions["device.key.rotate"]["actor"].startswith("key_")
    assert "sk_live_" not in json.dumps(sink.audits, default=str)


def test_limits_by_role_and_by_key(app: tuple[AppContext, TestClient]) -> None:
    ctx = memory_context(make_settings(service_rate_limit_per_minute=3))
    with app_client(ctx) as client:
        ctx.limiter.clock = lambda: 60_000.0  # one window for the whole test
        by_role = bearer(str(create(client, role="service")["api_key"]))
        own = bearer(str(create(client, role="service", rate_limit_per_minute=5)["api_key"]))
        assert [client.get("/api/v1/status", headers=by_role).status_code for _ in range(4)] == [200] * 3 + [429]
        codes = [client.get("/api/v1/status", headers=own).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        refused = client.get("/api/v1/status", headers=own)
        assert refused.headers["Retry-After"] and refused.json()["details"]["limit_per_minute"] == 5


class CountingStore(InMemoryFleetStore):
    def __init__(self) -> None:
        super().__init__()
        self.key_reads = 0

    def get_api_key(self, key_hash: str):  # type: ignore[no-untyped-def]
        self.key_reads += 1
        return super().get_api_key(key_hash)


def run(coroutine: Any) -> Any:
    """On a loop of its own, leaving the thread's current loop alone (pytest-asyncio's session loop)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def test_a_cached_key_is_answered_without_the_store_until_its_age_runs_out() -> None:
    store = CountingStore()
    now = [0.0]
    authenticator = Authenticator(store, make_settings(key_cache_max_age_s=30), clock=lambda: now[0])
    service = run(KeyService(make_settings(), store, RecordingSink(), authenticator, _Bus(authenticator)).create(
        authenticator.authenticate(ADMIN_KEY), SubjectType.SERVICE, "svc", None, None))
    assert authenticator.try_authenticate(service.api_key) is None  # not cached yet
    authenticator.lookup(service.api_key)
    for _ in range(5):
        assert authenticator.try_authenticate(service.api_key) is not None
    assert store.key_reads == 1
    now[0] = 31.0  # the backstop: past the bound the store is asked again
    assert authenticator.try_authenticate(service.api_key) is None


def test_a_lookup_that_overlaps_a_key_event_is_not_cached() -> None:
    """It may have read the key before the revocation was written; caching it would outlive the event."""
    store = InMemoryFleetStore()
    authenticator = Authenticator(store, make_settings())
    key = new_api_key()
    from core.api_keys import hash_api_key, key_id
    from core.fleet.models import ApiKeyRecord

    record = ApiKeyRecord(hash_api_key(key), key_id(key), SubjectType.SERVICE, "svc", utcnow())
    store.put_api_key(record)
    original = store.get_api_key

    def racing_read(key_hash: str) -> ApiKeyRecord | None:
        found = original(key_hash)
        authenticator.apply(KeyEvent(record.key_id, "revoked", SubjectType.SERVICE, "svc", utcnow()))
        return found

    store.get_api_key = racing_read  # type: ignore[method-assign]
    authenticator.lookup(key)
    assert authenticator.try_authenticate(key) is None  # not answered from the cache


class _Bus:
    def __init__(self, authenticator: Authenticator, confirmed: bool = True) -> None:
        self.authenticator = authenticator
        self.confirmed = confirmed

    async def broadcast(self, events: list[KeyEvent]) -> Propagation:
        for event in events:
            self.authenticator.apply(event)
        return Propagation(self.confirmed, 1, () if self.confirmed else ("replica-b",))


def test_an_unconfirmed_revocation_is_503_with_what_holds_and_rotation_says_so_in_its_answer() -> None:
    ctx = memory_context(make_settings())
    ctx.keys.bus = _Bus(ctx.authenticator, confirmed=False)
    with app_client(ctx) as client:
        created = create(client, role="service")
        response = client.post(f"/api/v1/keys/{created['key_id']}/revoke", headers=ADMIN)
        assert response.status_code == 503 and response.json()["error_code"] == "KEY_REVOCATION_UNCONFIRMED"
        details = response.json()["details"]
        assert details["pending"] == ["replica-b"] and details["cache_max_age_s"] == 60.0
        assert client.get("/api/v1/status", headers=bearer(str(created["api_key"]))).status_code == 401
        other = create(client, role="service")
        rotated = client.post(f"/api/v1/keys/{other['key_id']}/rotate", headers=ADMIN)
        assert rotated.status_code == 201 and rotated.json()["propagation"] == {
            "confirmed": False, "replicas": 1, "pending": ["replica-b"]}


def test_forwarded_for_values_are_parsed_as_rfc_7239_writes_them() -> None:
    header = 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711", For="198.51.100.17:80"'
    assert forwarded_for(header) == ["192.0.2.60", "2001:db8:cafe::17", "198.51.100.17"]
    assert forwarded_for("for=unknown, for=_hidden") == ["unknown", "_hidden"]
    trusted = TrustedProxies("10.0.0.0/8, 127.0.0.1, testclient")
    assert "10.1.2.3" in trusted and "127.0.0.1" in trusted and "testclient" in trusted
    assert "192.0.2.1" not in trusted and "unknown" not in trusted


@pytest.mark.parametrize(("peer", "header", "seen"), [
    ("10.0.0.5", "for=198.51.100.7", "198.51.100.7"),  # a trusted proxy: believed
    ("10.0.0.5", "for=198.51.100.7, for=10.0.0.9", "198.51.100.7"),  # the last one that is not a proxy
    ("192.0.2.1", "for=198.51.100.7", "192.0.2.1"),  # anyone else: ignored
    ("10.0.0.5", "", "10.0.0.5"),
])
def test_the_forwarded_header_is_believed_only_from_trusted_proxies(peer: str, header: str, seen: str) -> None:
    scopes: list[dict[str, object]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        scopes.append(scope)

    middleware = ForwardedHeader(app, trusted="10.0.0.0/8")
    headers = [(b"forwarded", header.encode())] if header else []
    run(middleware({"type": "http", "client": (peer, 1234), "headers": headers}, None, None))  # type: ignore[arg-type]
    assert scopes[0]["client"][0] == seen  # type: ignore[index]
