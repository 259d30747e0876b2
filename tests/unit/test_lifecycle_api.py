"""Seed 001 §2.6/§2.7 REST: POST /models/{id}/load|unload, GET /health/models, /status loaded
models, registry delete 409 while resident; and /infer's catalog lookup. Workers are faked: a
sink that answers model commands by writing residency rows as the workers would."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.errors import DomainError
from core.events import EventsUnavailable
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import CatalogModel
from core.serving.residency import InMemoryResidencyStore, Residency, ResidencyState
from core.serving.service import InferenceService
from core.serving.validation import validate_request
from settings import Settings
from tests.recording_sink import RecordingSink
from topology.messages import MessageType

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": f"Bearer {(ADMIN_KEY := new_api_key())}"}
HF_ID = "org/linear-model"
ENCODED = HF_ID.replace("/", "%2F")
WORKERS = ("inference-worker-high-h-1", "inference-worker-low-h-2")


class FakeWorkers(RecordingSink):
    """Applies model commands to the residency store the way the worker processes do."""

    def __init__(self, residency: InMemoryResidencyStore) -> None:
        super().__init__()
        self.residency = residency
        self.mode = "ok"  # ok | oom | broken | silent

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        await super().publish(message_type, record)
        if message_type != "model_command" or self.mode == "silent":
            return
        now = datetime.now(UTC)
        for worker in WORKERS:
            if record["command"] == "unload":
                self.residency.delete(record["model_id"], worker)
            elif self.mode == "ok":
                self.residency.put(Residency(record["model_id"], worker, ResidencyState.LOADED, now,
                                             memory_bytes=5 * 2**20, loaded_at=now, last_used_at=now), 30)
            else:
                code = "INSUFFICIENT_MEMORY" if self.mode == "oom" else "MODEL_LOAD_FAILED"
                self.residency.put(Residency(record["model_id"], worker, ResidencyState.UNHEALTHY, now,
                                             error_code=code, error="nope"), 30)

    def commands(self) -> list[tuple[str, str]]:
        return [(r["command"], r["model_id"]) for r in self.of_type("model_command")]


@pytest.fixture
def ctx() -> AppContext:
    residency = InMemoryResidencyStore()
    context = AppContext(settings=Settings(admin_api_key=SecretStr(ADMIN_KEY), model_load_wait_s=0.5),
                         store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(), events=FakeWorkers(residency),
                         residency=residency, queue_depth=lambda: {"high_priority": 2, "medium_priority": 0,
                                                                   "low_priority": 1})
    now = datetime.now(UTC)
    context.store.create_model(CatalogModel(id=HF_ID, is_baseline=False, created_at=now, updated_at=now))
    context.lifecycle.poll_interval_s = 0.01
    return context


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx.settings, ctx)) as client:
        yield client


def workers(ctx: AppContext) -> FakeWorkers:
    assert isinstance(ctx.events, FakeWorkers)
    return ctx.events


@pytest.mark.parametrize("path", [ENCODED, HF_ID])
def test_load_answers_the_model_status_once_a_worker_reports_it(api: TestClient, ctx: AppContext,
                                                                path: str) -> None:
    response = api.post(f"/api/v1/models/{path}/load", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == HF_ID and body["state"] == "loaded" and body["memory_usage_mb"] == 5.0
    assert body["device"] == "cpu" and body["health_status"]["healthy"] is True
    assert sorted(body["workers"]) == sorted(WORKERS)
    assert workers(ctx).commands() == [("load", HF_ID)]
    assert [r["event_type"] for r in workers(ctx).of_type("lifecycle_event")] == ["model_load_requested"]

    health = api.get("/health/models").json()  # open, like the other probes
    assert health["healthy_count"] == 2 and health["unhealthy_count"] == 0
    assert {(m["model_id"], m["worker"], m["healthy"]) for m in health["models"]} == {
        (HF_ID, w, True) for w in WORKERS}
    status = api.get("/api/v1/status", headers=ADMIN).json()
    assert {m["model_id"] for m in status["loaded_models"]} == {HF_ID} and len(status["loaded_models"]) == 2
    assert status["queue_depth"] == {"high_priority": 2, "medium_priority": 0, "low_priority": 1}
    assert status["total_models"] == 1 and "active_devices" in status  # the fleet fields stay

    unloaded = api.post(f"/api/v1/models/{path}/unload", headers=ADMIN)
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "unloaded" and sorted(unloaded.json()["workers"]) == sorted(WORKERS)
    assert workers(ctx).commands()[-1] == ("unload", HF_ID)
    assert api.get("/health/models").json()["models"] == []
    again = api.post(f"/api/v1/models/{path}/unload", headers=ADMIN)
    assert again.status_code == 404 and again.json()["error_code"] == "MODEL_NOT_LOADED"


def test_load_errors(api: TestClient, ctx: AppContext) -> None:
    unknown = api.post("/api/v1/models/org/nothing/load", headers=ADMIN)
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "MODEL_NOT_FOUND"
    assert api.post("/api/v1/models/org/nothing/unload", headers=ADMIN).json()["error_code"] == "MODEL_NOT_FOUND"
    assert api.post("/api/v1/models/a..b/load", headers=ADMIN).status_code == 400
    assert workers(ctx).commands() == []

    workers(ctx).mode = "oom"
    oom = api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN)
    assert oom.status_code == 507 and oom.json()["error_code"] == "INSUFFICIENT_MEMORY"
    assert oom.json()["error"] == "insufficient_storage" and set(oom.json()["details"]["workers"]) == set(WORKERS)
    unhealthy = api.get("/health/models").json()
    assert unhealthy["unhealthy_count"] == 2 and unhealthy["models"][0]["error_code"] == "INSUFFICIENT_MEMORY"

    workers(ctx).mode = "broken"
    broken = api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN)
    assert broken.status_code == 503 and broken.json()["error_code"] == "MODEL_LOAD_FAILED"

    workers(ctx).mode = "silent"  # stale failures from before the command do not count
    for worker in WORKERS:
        ctx.residency.delete(HF_ID, worker)
    ctx.residency.put(Residency(HF_ID, WORKERS[0], ResidencyState.UNHEALTHY, datetime(2020, 1, 1, tzinfo=UTC),
                                error_code="INSUFFICIENT_MEMORY"), 30)
    timeout = api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN)
    assert timeout.status_code == 503 and timeout.json()["error_code"] == "MODEL_NOT_LOADED"
    assert int(timeout.headers["Retry-After"]) >= 1

    workers(ctx).fail_with = EventsUnavailable("broker down", 3.0)
    down = api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN)
    assert down.status_code == 503 and down.json()["error_code"] == "SERVICE_UNAVAILABLE"
    assert down.headers["Retry-After"] == "3"


def test_lifecycle_needs_the_operator_key(api: TestClient) -> None:
    device = api.post("/api/v1/devices/register", json={"device_id": "lifecycle-dev"}).json()["api_key"]
    as_device = {"Authorization": f"Bearer {device}"}
    assert api.post(f"/api/v1/models/{ENCODED}/load", headers=as_device).status_code == 403
    assert api.post(f"/api/v1/models/{ENCODED}/load").status_code == 401


def test_unload_waits_for_the_workers_and_times_out(api: TestClient, ctx: AppContext) -> None:
    api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN)
    workers(ctx).mode = "silent"  # the workers never act on the unload
    stuck = api.post(f"/api/v1/models/{ENCODED}/unload", headers=ADMIN)
    assert stuck.status_code == 503 and "Retry-After" in stuck.headers


def test_delete_is_409_while_resident_unless_forced(api: TestClient, ctx: AppContext) -> None:
    assert api.post(f"/api/v1/models/{ENCODED}/load", headers=ADMIN).status_code == 200
    refused = api.delete(f"/api/v1/models/{ENCODED}", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["error_code"] == "MODEL_LOADED"
    assert refused.json()["details"]["loaded_on"] == sorted(WORKERS)
    assert api.delete(f"/api/v1/models/{HF_ID}?force=true", headers=ADMIN).status_code == 204
    assert workers(ctx).commands()[-1] == ("unload", HF_ID)
    assert ctx.store.get_model(HF_ID) is None


class NoRequests:
    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> Any:
        raise AssertionError("not reached")


class NoReplies:
    def owned_partition(self) -> int:
        return 0

    async def wait_for_partition(self, timeout_s: float) -> int:
        return 0

    def expect(self, correlation_id: str, partition: int) -> Any:
        raise AssertionError("not reached")

    def discard(self, correlation_id: str) -> None:
        pass


async def test_inference_knows_catalog_models_and_the_generic_tensor_contract() -> None:
    store = InMemoryFleetStore()
    now = datetime.now(UTC)
    store.create_model(CatalogModel(id="uploaded", is_baseline=False, created_at=now, updated_at=now))
    store.create_model(CatalogModel(id="org/emb", is_baseline=False, created_at=now, updated_at=now,
                                    task_type="txt2embed"))
    service = InferenceService(Settings(), NoRequests(), NoReplies(), models={"builtin/x": "txt2embed"},
                               catalog=store)
    assert await service.resolve_task_type("builtin/x") == "txt2embed"
    assert await service.resolve_task_type("uploaded") == "tensor"
    assert await service.resolve_task_type("org/emb") == "txt2embed"
    with pytest.raises(DomainError) as missing:
        await service.resolve_task_type("org/none")
    assert missing.value.code == "MODEL_NOT_FOUND"
    task_type, _ = await service.check_async("uploaded", {"inputs": [[1.0, 2.0]]}, {}, "high", 10)
    assert task_type == "tensor"
    with pytest.raises(DomainError) as bad:
        await service.check_async("uploaded", {"text": "x"}, {}, "high", 10)
    assert bad.value.code == "INVALID_INPUT"
    # Without a catalog (the unit-test constructor), only built-ins are known.
    plain = InferenceService(Settings(), NoRequests(), NoReplies(), models={"builtin/x": "txt2embed"})
    with pytest.raises(DomainError):
        await plain.resolve_task_type("uploaded")


def test_generic_tensor_schema() -> None:
    validate_request("tensor", {"inputs": [[0.1, 0.2], [0.3, 0.4]]}, {})
    validate_request("tensor", {"inputs": [1, 2, 3]}, {})
    bad: dict[str, Any]
    for bad in ({}, {"inputs": []}, {"inputs": "1,2"}, {"inputs": ["a"]}):
        with pytest.raises(DomainError):
            validate_request("tensor", bad, {})
