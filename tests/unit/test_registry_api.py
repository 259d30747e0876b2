"""Seed 001 registry on the shared catalog: register, list (both pagination styles), get by
URL-encoded id, update, download (202), delete (409 while loaded), lock file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.serving.residency import Residency, ResidencyState
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": f"Bearer {(ADMIN_KEY := new_api_key())}"}
MINILM = {"model_id": "sentence-transformers/all-MiniLM-L6-v2", "version": "v2.2.2", "task_type": "txt2embed",
          "display_name": "MiniLM-L6 Sentence Embeddings",
          "config": {"vector_size": 384, "max_length": 512, "batch_size": 32},
          "resource_requirements": {"memory_mb": 256, "cpu_threads": 2}}


@pytest.fixture
def ctx() -> AppContext:
    return memory_context(Settings(admin_api_key=SecretStr(ADMIN_KEY)))


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def test_register_get_update_and_list(api: TestClient, ctx: AppContext) -> None:
    created = api.post("/api/v1/models", json=MINILM, headers=ADMIN)
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    assert body["model_id"] == MINILM["model_id"] and body["status"] == "registered"
    assert body["task_type"] == "txt2embed" and body["config"]["vector_size"] == 384
    again = api.post("/api/v1/models", json=MINILM, headers=ADMIN)
    assert again.status_code == 409 and again.json()["error_code"] == "MODEL_ALREADY_EXISTS"

    encoded = "sentence-transformers%2Fall-MiniLM-L6-v2"
    for path in (encoded, MINILM["model_id"]):
        got = api.get(f"/api/v1/models/{path}", headers=ADMIN)
        assert got.status_code == 200 and got.json()["display_name"] == MINILM["display_name"]

    updated = api.put(f"/api/v1/models/{encoded}", json={"description": "384-d", "config": {"batch_size": 8}},
                      headers=ADMIN)
    assert updated.status_code == 200 and updated.json()["config"] == {"batch_size": 8}

    fleet = api.post("/api/v1/models", json={"framework": "pytorch"}, headers=ADMIN).json()
    listing = api.get("/api/v1/models?page=1&page_size=1", headers=ADMIN).json()
    assert listing["meta"] == {"total": 2, "page": 1, "page_size": 1, "total_pages": 2}
    assert listing["data"] == listing["models"] and len(listing["data"]) == 1
    only_embed = api.get("/api/v1/models?task_type=txt2embed", headers=ADMIN).json()
    assert [m["model_id"] for m in only_embed["models"]] == [MINILM["model_id"]]
    registered = api.get("/api/v1/models?status=registered", headers=ADMIN).json()
    assert {m["id"] for m in registered["models"]} == {MINILM["model_id"], fleet["id"]}
    events = ctx.events
    assert isinstance(events, RecordingSink)
    assert [a["action"] for a in events.audits][:2] == ["model.register", "model.update"]


def test_validation_and_ids(api: TestClient) -> None:
    bad_task = api.post("/api/v1/models", json=MINILM | {"task_type": "txt2video"}, headers=ADMIN)
    assert bad_task.status_code == 400
    traversal = api.post("/api/v1/models", json=MINILM | {"model_id": "../../etc/passwd"}, headers=ADMIN)
    assert traversal.status_code == 400 and traversal.json()["error_code"] == "INVALID_MODEL_ID"
    device_key = api.post("/api/v1/devices/register", json={"device_id": "d1"}).json()["api_key"]
    forbidden = api.post("/api/v1/models", json=MINILM, headers={"Authorization": f"Bearer {device_key}"})
    assert forbidden.status_code == 403


def test_registry_status_is_what_the_workers_report(api: TestClient, ctx: AppContext) -> None:
    api.post("/api/v1/models", json=MINILM, headers=ADMIN)
    model_id = str(MINILM["model_id"])

    def status() -> tuple[str, str | None]:
        body = api.get(f"/api/v1/models/{model_id}", headers=ADMIN).json()
        return body["status"], body["status_reason"]

    assert status() == ("registered", None)
    # No files: a download nothing could carry out is refused, and the status does not move.
    refused = api.post(f"/api/v1/models/{model_id}/download", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["error_code"] == "MODEL_FILES_MISSING"
    assert status() == ("registered", None)
    events = ctx.events
    assert isinstance(events, RecordingSink) and events.of_type("model_command") == []

    model = ctx.store.get_model(model_id)
    assert model is not None
    model.model_path = "s3://tributary-artifacts/models/minilm/v1/model.onnx"  # as a stored version sets it
    ctx.store.update_model(model)
    assert status() == ("ready", None)
    accepted = api.post(f"/api/v1/models/{model_id}/download", headers=ADMIN)
    assert accepted.status_code == 202 and accepted.json()["status"] == "downloading"
    assert events.of_type("model_command")[-1]["command"] == "load"
    now = datetime.now(UTC)
    for state, expected in ((ResidencyState.LOADING, ("downloading", None)),
                            (ResidencyState.UNHEALTHY, ("failed", "MODEL_LOAD_FAILED: bad graph")),
                            (ResidencyState.LOADED, ("ready", None))):
        ctx.residency.put(Residency(model_id, "inference-worker-high-1", state, now, error_code="MODEL_LOAD_FAILED"
                                    if state is ResidencyState.UNHEALTHY else None,
                                    error="bad graph" if state is ResidencyState.UNHEALTHY else None), ttl_s=30)
        assert status() == expected, state
        listed = api.get("/api/v1/models", params={"status": expected[0]}, headers=ADMIN).json()["models"]
        assert model_id in [m["model_id"] for m in listed]
    ctx.residency.delete(model_id, "inference-worker-high-1")


def test_download_delete_and_lock(api: TestClient, ctx: AppContext) -> None:
    api.post("/api/v1/models", json=MINILM, headers=ADMIN)
    model_id = str(MINILM["model_id"])
    events = ctx.events
    assert isinstance(events, RecordingSink)

    lock = api.post("/api/v1/models/lock", headers=ADMIN).json()
    assert lock["models"][0]["model_id"] == model_id and lock["models"][0]["version"] == "v2.2.2"

    # A model the workers report loaded cannot be deleted without force.
    model = ctx.store.get_model(model_id)
    assert model is not None
    model.extra["loaded_on"] = ["inference-worker-high-1"]
    ctx.store.update_model(model)
    refused = api.delete(f"/api/v1/models/{model_id}", headers=ADMIN)
    assert refused.status_code == 409 and refused.json()["error_code"] == "MODEL_LOADED"
    assert api.delete(f"/api/v1/models/{model_id}?force=true", headers=ADMIN).status_code == 204
    assert events.of_type("model_command")[-1]["command"] == "unload"
    assert api.get(f"/api/v1/models/{model_id}", headers=ADMIN).status_code == 404
    assert api.delete(f"/api/v1/models/{model_id}", headers=ADMIN).status_code == 404
