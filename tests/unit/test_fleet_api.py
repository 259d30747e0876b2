"""Every error path of seed 000 through the real FastAPI app, on in-memory fakes of the stores."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.events import EventsUnavailable
from core.fleet.memory_store import InMemoryFleetStore
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit
ADMIN = new_api_key()


@pytest.fixture
def ctx() -> AppContext:
    settings = Settings(admin_api_key=SecretStr(ADMIN), rate_limit_per_minute=30, max_upload_bytes=64 * 1024)
    return memory_context(settings)


@pytest.fixture
def api(ctx: AppContext) -> Iterator[TestClient]:
    with app_client(ctx) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def register(api: TestClient, device_id: str | None = None) -> tuple[str, str]:
    device_id = device_id or f"dev-{uuid.uuid4().hex[:6]}"
    response = api.post("/api/v1/devices/register", json={"device_id": device_id, "platform": "python"})
    assert response.status_code == 201, response.text
    return device_id, response.json()["api_key"]


def weights() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 1).state_dict(), buffer)
    return buffer.getvalue()


def assert_envelope(response: Any, status: int, error: str, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status_code"] == status and body["error"] == error and body["message"]
    if code:
        assert body["error_code"] == code
    return body


def test_register_returns_the_key_once_and_stores_only_its_hash(api: TestClient, ctx: AppContext) -> None:
    device_id, key = register(api)
    assert key.startswith("sk_live_") and len(key) == 40
    store = ctx.store
    assert isinstance(store, InMemoryFleetStore)
    assert key not in repr(store.keys) and key not in repr(store.devices)
    device = api.get(f"/api/v1/devices/{device_id}", headers=auth(key)).json()
    assert device["device_id"] == device_id and "api_key" not in device
    assert key not in repr(ctx.events)  # never in events or audit records


def test_validation_errors_are_400_with_fields(api: TestClient) -> None:
    body = assert_envelope(api.post("/api/v1/devices/register", json={}), 400, "bad_request", "VALIDATION_ERROR")
    assert body["details"]["errors"][0]["field"] == "device_id"
    assert body["validation_errors"] == body["details"]["errors"]  # seed 001's ValidationError shape
    assert_envelope(api.post("/api/v1/devices/register", json={"device_id": "x", "platform": "windows"}),
                    400, "bad_request")
    assert_envelope(api.post("/api/v1/devices/register", content=b"not json",
                             headers={"content-type": "application/json"}), 400, "bad_request")
    assert_envelope(api.post("/api/v1/training/rounds/start", json={"target_devices": 5, "min_devices": 1,
                                                                     "timeout_seconds": 10}, headers=auth(ADMIN)),
                    400, "bad_request")
    assert_envelope(api.post("/api/v1/training/rounds/start", json={"target_devices": 1, "min_devices": 5},
                             headers=auth(ADMIN)), 400, "bad_request", "INVALID_ROUND")


def test_duplicate_device_is_409(api: TestClient) -> None:
    device_id, _ = register(api)
    body = assert_envelope(api.post("/api/v1/devices/register", json={"device_id": device_id}), 409, "conflict")
    assert device_id in body["message"]


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer sk_live_short", "Basic abc",
                                    f"Bearer {new_api_key()}"])
def test_missing_malformed_and_unknown_keys_are_401(api: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/api/v1/status"), ("GET", "/api/v1/devices/x"),
                         ("PUT", "/api/v1/devices/x/heartbeat"), ("GET", "/api/v1/models"),
                         ("GET", "/api/v1/training/rounds/current")]:
        assert_envelope(api.request(method, path, headers=headers), 401, "unauthorized", "UNAUTHORIZED")


def test_revoked_key_is_401(api: TestClient, ctx: AppContext) -> None:
    device_id, key = register(api)
    from core.api_keys import hash_api_key

    ctx.store.revoke_api_key(hash_api_key(key), ctx.fleet.clock())
    assert_envelope(api.get(f"/api/v1/devices/{device_id}", headers=auth(key)), 401, "unauthorized")


def test_devices_cannot_act_for_each_other_or_as_operator(api: TestClient) -> None:
    alice, alice_key = register(api)
    bob, _ = register(api)
    assert_envelope(api.get(f"/api/v1/devices/{bob}", headers=auth(alice_key)), 403, "forbidden")
    assert_envelope(api.put(f"/api/v1/devices/{bob}/heartbeat", json={}, headers=auth(alice_key)), 403, "forbidden")
    assert_envelope(api.post("/api/v1/training/rounds/start", json={"target_devices": 1, "min_devices": 1},
                             headers=auth(alice_key)), 403, "forbidden")
    assert_envelope(api.post("/api/v1/models", json={}, headers=auth(alice_key)), 403, "forbidden")
    assert api.get(f"/api/v1/devices/{alice}", headers=auth(alice_key)).status_code == 200


def test_not_found_paths(api: TestClient) -> None:
    assert_envelope(api.get("/api/v1/devices/ghost", headers=auth(ADMIN)), 404, "not_found", "DEVICE_NOT_FOUND")
    assert_envelope(api.get("/api/v1/training/rounds/current", headers=auth(ADMIN)), 404, "not_found")
    assert_envelope(api.get(f"/api/v1/training/rounds/{uuid.uuid4()}/status", headers=auth(ADMIN)), 404,
                    "not_found")
    assert_envelope(api.get(f"/api/v1/models/{uuid.uuid4()}", headers=auth(ADMIN)), 404, "not_found")
    assert_envelope(api.get("/api/v1/models/not-registered", headers=auth(ADMIN)), 404, "not_found")
    assert_envelope(api.get("/api/v1/models/..%2F..%2Fetc%2Fpasswd", headers=auth(ADMIN)), 400, "bad_request",
                    "INVALID_MODEL_ID")
    model = api.post("/api/v1/models", json={"framework": "pytorch"}, headers=auth(ADMIN)).json()
    assert_envelope(api.get(f"/api/v1/models/{model['id']}/versions/1/download", headers=auth(ADMIN)), 404,
                    "not_found", "VERSION_NOT_FOUND")


def test_round_conflicts_and_update_rules(api: TestClient, ctx: AppContext) -> None:
    selected, selected_key = register(api)
    outsider, outsider_key = register(api)
    api.put(f"/api/v1/devices/{selected}/heartbeat", json={}, headers=auth(selected_key))
    # The processor applies heartbeats; here the fake store gets them directly.
    ctx.store.record_heartbeat(selected, ctx.fleet.clock(), "active", {})
    round_ = api.post("/api/v1/training/rounds/start", json={"target_devices": 1, "min_devices": 1},
                      headers=auth(ADMIN))
    assert round_.status_code == 201, round_.text
    round_id = round_.json()["id"]
    assert_envelope(api.post("/api/v1/training/rounds/start", json={"target_devices": 1, "min_devices": 1},
                             headers=auth(ADMIN)), 409, "conflict", "ROUND_ALREADY_ACTIVE")
    hb = api.put(f"/api/v1/devices/{selected}/heartbeat", json={}, headers=auth(selected_key)).json()
    assert hb["pending_round_id"] == round_id and "awaiting" in hb["message"]
    assert api.put(f"/api/v1/devices/{outsider}/heartbeat", json={},
                   headers=auth(outsider_key)).json()["pending_round_id"] is None

    files = {"file": ("u.pt", weights(), "application/octet-stream")}
    url = f"/api/v1/training/rounds/{round_id}/updates"
    assert_envelope(api.post(url, data={"num_samples": "10"}, files=files, headers=auth(outsider_key)), 403,
                    "forbidden", "DEVICE_NOT_SELECTED")
    assert_envelope(api.post(url, data={"num_samples": "0"}, files=files, headers=auth(selected_key)), 400,
                    "bad_request")
    assert_envelope(api.post(url, data={"num_samples": "10"}, files={"file": ("u.pt", b"junk", "x/y")},
                             headers=auth(selected_key)), 415, "unsupported_media_type", "INVALID_MODEL_FILE")
    assert_envelope(api.post(url, data={"num_samples": "10"}, files={"file": ("u.pt", b"x" * 70_000, "x/y")},
                             headers=auth(selected_key)), 413, "request_entity_too_large", "FILE_TOO_LARGE")
    ok = api.post(url, data={"num_samples": "10", "local_loss": "0.5"}, files=files, headers=auth(selected_key))
    assert ok.status_code == 201, ok.text
    assert ok.json()["num_samples"] == 10
    assert_envelope(api.post(url, data={"num_samples": "10"}, files=files, headers=auth(selected_key)), 409,
                    "conflict", "UPDATE_ALREADY_SUBMITTED")
    events = ctx.events
    assert isinstance(events, RecordingSink)
    assert len(events.of_type("model_update_submitted")) == 1

    ctx.store.transition_round(round_id, *_statuses("active", "aggregating"))
    assert_envelope(api.post(url, data={"num_samples": "10"}, files=files, headers=auth(selected_key)), 409,
                    "conflict", "ROUND_NOT_ACTIVE")


def _statuses(a: str, b: str) -> tuple[Any, Any]:
    from core.fleet.models import RoundStatus

    return RoundStatus(a), RoundStatus(b)


def test_rate_limit_is_429_with_retry_after(api: TestClient) -> None:
    device_id, key = register(api)
    codes = [api.get(f"/api/v1/devices/{device_id}", headers=auth(key)).status_code for _ in range(31)]
    assert codes[:30] == [200] * 30
    limited = api.get(f"/api/v1/devices/{device_id}", headers=auth(key))
    body = assert_envelope(limited, 429, "too_many_requests", "RATE_LIMITED")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert body["details"] == {"limit_per_minute": 30}


def test_broker_down_is_503_with_retry_after_and_nothing_kept(api: TestClient, ctx: AppContext) -> None:
    events = ctx.events
    assert isinstance(events, RecordingSink)
    events.fail_with = EventsUnavailable("broker down", 2.0)
    response = api.post("/api/v1/devices/register", json={"device_id": "while-down"})
    assert_envelope(response, 503, "service_unavailable", "EVENTS_UNAVAILABLE")
    assert response.headers["Retry-After"] == "2"
    events.fail_with = None
    assert api.post("/api/v1/devices/register", json={"device_id": "while-down"}).status_code == 201


def test_s3_down_during_upload_is_503_and_publishes_nothing(api: TestClient, ctx: AppContext) -> None:
    model = api.post("/api/v1/models", json={"framework": "pytorch"}, headers=auth(ADMIN)).json()
    artifacts = ctx.artifacts
    assert isinstance(artifacts, MemoryArtifactStore)
    artifacts.available = False
    events = ctx.events
    assert isinstance(events, RecordingSink)
    before = len(events.events)
    response = api.post(f"/api/v1/models/{model['id']}/versions/upload", files={"file": ("m.pt", weights())},
                        headers=auth(ADMIN))
    assert_envelope(response, 503, "service_unavailable", "STORAGE_UNAVAILABLE")
    assert len(events.events) == before


def test_catalog_upload_download_and_onnx_conversion(api: TestClient) -> None:
    model = api.post("/api/v1/models", json={"framework": "pytorch", "description": "tiny", "is_baseline": True},
                     headers=auth(ADMIN))
    assert model.status_code == 201
    model_id = model.json()["id"]
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    up = api.post(f"/api/v1/models/{model_id}/versions/upload", files={"file": ("model.pt", buffer.getvalue())},
                  data={"format": "pytorch", "description": "v1"}, headers=auth(ADMIN))
    assert up.status_code == 201, up.text
    assert up.json()["version"] == 1 and up.json()["model_hash"].startswith("sha256:")
    plain = api.post(f"/api/v1/models/{model_id}/versions/upload", files={"file": ("w.pt", weights())},
                     headers=auth(ADMIN))
    assert plain.json()["version"] == 2

    original = api.get(f"/api/v1/models/{model_id}/versions/1/download", headers=auth(ADMIN))
    assert original.content == buffer.getvalue()
    assert original.headers["Content-Disposition"] == 'attachment; filename="model_v1.pt"'
    onnx = api.get(f"/api/v1/models/{model_id}/versions/1/download?format=onnx", headers=auth(ADMIN))
    assert onnx.status_code == 200 and onnx.headers["Content-Disposition"].endswith('.onnx"')
    import onnxruntime as ort

    session = ort.InferenceSession(onnx.content)
    assert session.run(None, {"input": torch.ones(2, 4).numpy()})[0].shape == (2, 3)
    assert_envelope(api.get(f"/api/v1/models/{model_id}/versions/2/download?format=onnx", headers=auth(ADMIN)),
                    404, "not_found", "FORMAT_NOT_AVAILABLE")
    detail = api.get(f"/api/v1/models/{model_id}", headers=auth(ADMIN)).json()
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    listing = api.get("/api/v1/models?is_baseline=true&framework=pytorch", headers=auth(ADMIN)).json()
    assert listing["total"] == 1 and listing["limit"] == 20 and listing["offset"] == 0
    assert_envelope(api.post(f"/api/v1/models/{model_id}/versions/upload",
                             files={"file": ("../../etc/passwd.onnx", b"not onnx")}, data={"format": "onnx"},
                             headers=auth(ADMIN)), 400, "bad_request", "INVALID_FILENAME")
    assert_envelope(api.post(f"/api/v1/models/{model_id}/versions/upload",
                             files={"file": ("passwd.onnx", b"not onnx")}, data={"format": "onnx"},
                             headers=auth(ADMIN)), 415, "unsupported_media_type")


def test_openapi_documents_the_seed_operations(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method in [("/api/v1/health", "get"), ("/api/v1/status", "get"), ("/api/v1/devices/register", "post"),
                         ("/api/v1/devices/{device_id}", "get"), ("/api/v1/devices/{device_id}/heartbeat", "put"),
                         ("/api/v1/training/rounds/start", "post"), ("/api/v1/training/rounds/current", "get"),
                         ("/api/v1/training/rounds/{round_id}/status", "get"),
                         ("/api/v1/training/rounds/{round_id}/updates", "post"), ("/api/v1/models", "post"),
                         ("/api/v1/models", "get"), ("/api/v1/models/{model_id}", "get"),
                         ("/api/v1/models/{model_id}/versions/upload", "post"),
                         ("/api/v1/models/{model_id}/versions/{version}/download", "get")]:
        assert method in paths[path], (path, method)
    assert paths["/api/v1/devices/register"]["post"]["security"] == []


def test_an_exported_program_upload_converts_to_onnx(api: TestClient) -> None:
    model = api.post("/api/v1/models", json={"framework": "pytorch", "description": "exported"},
                     headers=auth(ADMIN))
    model_id = model.json()["id"]
    network = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    example = torch.randn(1, 4)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(network, (example,)), buffer)
    up = api.post(f"/api/v1/models/{model_id}/versions/upload", files={"file": ("model.pt2", buffer.getvalue())},
                  data={"format": "pytorch"}, headers=auth(ADMIN))
    assert up.status_code == 201, up.text
    onnx = api.get(f"/api/v1/models/{model_id}/versions/1/download?format=onnx", headers=auth(ADMIN))
    assert onnx.status_code == 200, onnx.text
    import onnxruntime as ort

    (output,) = ort.InferenceSession(onnx.content).run(None, {"input": example.numpy()})
    assert output == pytest.approx(network(example).detach().numpy(), abs=1e-6)
