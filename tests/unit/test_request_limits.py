"""Request body size limit (413 in the envelope) and the input bounds fuzzing found (issue 7)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.limits import MULTIPART_OVERHEAD_BYTES
from core.api_keys import new_api_key
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.uploads import zip_bomb_state_dict

pytestmark = pytest.mark.unit
ADMIN = new_api_key()
AUTH = {"Authorization": f"Bearer {ADMIN}"}
MAX_REQUEST = 4096
MAX_UPLOAD = 64 * 1024


@pytest.fixture
def api() -> Iterator[TestClient]:
    settings = Settings(admin_api_key=SecretStr(ADMIN), max_request_bytes=MAX_REQUEST, max_upload_bytes=MAX_UPLOAD)
    with app_client(memory_context(settings)) as client:
        yield client


def assert_413(response: object) -> None:
    assert getattr(response, "status_code", None) == 413, getattr(response, "text", "")
    body = response.json()  # type: ignore[attr-defined]
    assert body["error"] == "request_entity_too_large" and body["error_code"] == "REQUEST_TOO_LARGE"
    assert body["status_code"] == 413 and body["details"]["max_bytes"] > 0 and body["trace_id"]
    assert response.headers["x-trace-id"] == body["trace_id"]  # type: ignore[attr-defined]


def test_json_body_over_the_limit_is_413_before_the_endpoint(api: TestClient) -> None:
    big = {"device_id": "d-" + "x" * MAX_REQUEST}
    assert_413(api.post("/api/v1/devices/register", json=big))
    assert_413(api.post("/api/v1/pipelines/validate", headers={**AUTH, "content-type": "application/json"},
                        content=b"{" + b" " * MAX_REQUEST + b"}"))
    # A body within the limit still reaches the endpoint's own validation.
    small = api.post("/api/v1/devices/register", json={"device_id": "ok-" + uuid.uuid4().hex[:6]})
    assert small.status_code == 201, small.text


def test_chunked_body_is_counted_as_it_streams(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"device_id": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}'

    response = api.post("/api/v1/devices/register", content=chunks(), headers={"content-type": "application/json"})
    assert_413(response)


def test_multipart_uploads_get_the_upload_limit_plus_form_overhead(api: TestClient) -> None:
    model = api.post("/api/v1/models", headers=AUTH, json={"framework": "pytorch"}).json()["id"]
    url = f"/api/v1/models/{model}/versions/upload"
    # Larger than a JSON body may be but within the upload limit: reaches the endpoint (415: not a model).
    response = api.post(url, headers=AUTH, files={"file": ("m.pt", b"\0" * (MAX_REQUEST * 2))})
    assert response.status_code == 415, response.text
    # Over the file limit but under the multipart limit: the endpoint's FILE_TOO_LARGE.
    response = api.post(url, headers=AUTH, files={"file": ("m.pt", b"\0" * (MAX_UPLOAD + 1))})
    assert response.status_code == 413 and response.json()["error_code"] == "FILE_TOO_LARGE"
    # Over the multipart limit: refused by the middleware.
    assert_413(api.post(url, headers=AUTH, files={"file": ("m.pt", b"\0" * (MAX_UPLOAD + MULTIPART_OVERHEAD_BYTES))}))


@pytest.mark.parametrize("path", [
    "/api/v1/models/0f36c1ab-5dc9-104d-b5b2-302efefe6ca2/versions/4486229863930456965120/download",
    "/api/v1/models/0f36c1ab-5dc9-104d-b5b2-302efefe6ca2/versions/2704741032/download",
])
def test_version_numbers_beyond_the_int_column_are_400_not_500(api: TestClient, path: str) -> None:
    # Found by tests/e2e/test_api_fuzz.py: Cassandra refused the value and the ingress answered 500.
    response = api.get(path, headers=AUTH)
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR", response.text


def test_round_sizes_beyond_the_int_column_are_400(api: TestClient) -> None:
    response = api.post("/api/v1/training/rounds/start", headers=AUTH,
                        json={"target_devices": 2**31, "min_devices": 1})
    assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR", response.text



def test_zip_bomb_state_dicts_are_refused_before_torch_inflates_them(api: TestClient) -> None:
    from core.errors import DomainError
    from core.fleet.weights import check_archive, load_state_dict

    bomb = zip_bomb_state_dict(20 * 1024 * 1024)  # ~20 KB on the wire, 20 MB when torch reads it
    assert len(bomb) < MAX_UPLOAD
    with pytest.raises(DomainError) as refused:
        load_state_dict(bomb)
    details = refused.value.details or {}
    assert refused.value.code == "INVALID_MODEL_FILE" and details["inflated_bytes"] > 20_000_000
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(64, 64).state_dict(), buffer)
    check_archive(buffer.getvalue())  # what torch.save writes passes
    assert set(load_state_dict(buffer.getvalue())) == {"weight", "bias"}

    model = api.post("/api/v1/models", headers=AUTH, json={"framework": "pytorch"}).json()["id"]
    response = api.post(f"/api/v1/models/{model}/versions/upload", headers=AUTH, files={"file": ("m.pt", bomb)})
    assert response.status_code == 415 and response.json()["error_code"] == "INVALID_MODEL_FILE", response.text
    assert "inflates" in response.json()["message"]


@pytest.mark.parametrize("filename", ["../../etc/passwd", "..\\..\\boot.ini", "/etc/passwd", ".."])
def test_upload_file_names_with_paths_or_control_characters_are_400(api: TestClient, filename: str) -> None:
    model = api.post("/api/v1/models", headers=AUTH, json={"framework": "pytorch"}).json()["id"]
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(2, 1).state_dict(), buffer)
    response = api.post(f"/api/v1/models/{model}/versions/upload", headers=AUTH,
                        files={"file": (filename, buffer.getvalue())})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_FILENAME", response.text
    ok = api.post(f"/api/v1/models/{model}/versions/upload", headers=AUTH, files={"file": ("m.pt", buffer.getvalue())})
    assert ok.status_code == 201, ok.text
