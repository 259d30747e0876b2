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


def test_registry_ids_get_versions_as_catalog_uuids_do(api: TestClient, ctx: AppContext) -> None:
    from tests.onnx_models import linear_onnx

    created = api.post("/api/v1/models", json={"model_id": "org/uploaded", "task_type": "img2embed"}, headers=ADMIN)
    assert created.status_code == 201 and created.json()["status"] == "registered"
    data = linear_onnx()
    for path in ("org/uploaded", "org%2Fuploaded"):
        uploaded = api.post(f"/api/v1/models/{path}/versions/upload", files={"file": ("m.onnx", data)},
                            data={"format": "onnx"}, headers=ADMIN)
        assert uploaded.status_code == 201, uploaded.text
    detail = api.get("/api/v1/models/org/uploaded", headers=ADMIN).json()
    assert [v["version"] for v in detail["versions"]] == [1, 2] and detail["status"] == "ready"
    downloaded = api.get("/api/v1/models/org/uploaded/versions/2/download", headers=ADMIN)
    assert downloaded.status_code == 200 and downloaded.content == data
    bad = api.post("/api/v1/models/../etc/versions/upload", files={"file": ("m.onnx", data)}, headers=ADMIN)
    assert bad.status_code in (400, 404)


def test_registration_source_url_fields(api: TestClient, ctx: AppContext) -> None:
    refused = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "org/remote", "task_type": "txt2embed", "source_url": "http://models.example.com/m.onnx"})
    assert refused.status_code == 400 and refused.json()["error_code"] == "SOURCE_NOT_ALLOWED"
    bad_sha = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "org/remote", "task_type": "txt2embed", "source_url": "https://models.example.com/m.onnx",
        "sha256": "not-hex"})
    assert bad_sha.status_code == 400
    no_source = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "org/remote", "task_type": "txt2embed", "auto_download": True})
    assert no_source.status_code == 400
    started = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "org/remote", "task_type": "txt2embed", "source_url": "https://u:p@models.example.com/m.onnx"})
    assert started.status_code == 400  # credentials in the URL are refused
    accepted = api.post("/api/v1/models", headers=ADMIN, json={
        "model_id": "org/remote", "task_type": "txt2embed", "auto_download": True,
        "source_url": "https://models.example.com/m.onnx?X-Amz-Signature=secret"})
    assert accepted.status_code == 201 and accepted.json()["status"] == "downloading"
    assert accepted.json()["source_url"] == "https://models.example.com/m.onnx"  # no query (signatures) shown
    again = api.post("/api/v1/models/org/remote/download", headers=ADMIN)
    assert again.status_code == 202 and again.json()["status"] == "downloading"  # nothing new while it runs
    events = ctx.events
    assert isinstance(events, RecordingSink) and len(events.of_type("model_download_requested")) == 1
