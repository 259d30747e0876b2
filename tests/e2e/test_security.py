"""Security of the real ingress (issue 7, item 3), against the session's running system.

- every operation but health, metrics, docs and registration refuses missing, malformed, unknown
  and revoked keys with 401 in the error envelope, and never echoes the key;
- a device key cannot act on another device's resources (403);
- raw keys never reach service logs or any Kafka topic of the session (audit included): only key ids;
- uploads with path names, wrong types, zip bombs or oversize bodies are refused with 4xx envelopes;
- model ids with traversal or control characters are 400/404, never 500;
- oversized JSON bodies are refused with 413.

The rate limit across two replicas is covered by ``tests/e2e/test_rate_limit_replicas.py``.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from confluent_kafka.admin import AdminClient

from core.api_keys import hash_api_key, key_id, new_api_key
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from settings import Settings
from tests.e2e.conftest import RunningSystem, client_address
from tests.e2e.serving import ENCODED_MINILM, messages_in
from tests.uploads import zip_bomb_state_dict

pytestmark = pytest.mark.e2e

KEY_PATTERN = re.compile(rb"sk_live_[A-Za-z0-9]{32}")
OPEN_PREFIXES = ("/health", "/api/v1/health", "/metrics", "/docs", "/openapi", "/redoc")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def store(system: RunningSystem) -> Iterator[CassandraFleetStore]:
    session = connect(system.settings, system.settings.cassandra_keyspace)
    try:
        yield CassandraFleetStore(session)
    finally:
        session.cluster.shutdown()


def register(system: RunningSystem, name: str) -> tuple[str, str]:
    device_id = f"{system.settings.topic_prefix}sec-{name}-{uuid.uuid4().hex[:6]}"
    response = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                          headers=client_address(), timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return device_id, response.json()["api_key"]


@pytest.fixture(scope="module")
def devices(system: RunningSystem) -> dict[str, tuple[str, str]]:
    return {name: register(system, name) for name in ("a", "b", "revoked")}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_envelope(response: httpx.Response, status: int | tuple[int, ...], *secrets: str) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.request.method, response.request.url, response.text)
    body: dict[str, Any] = response.json()
    assert body["status_code"] == response.status_code and body["error"] and body["error_code"]
    assert body["message"] and body["timestamp"], body
    for secret in secrets:
        assert secret not in response.text, "an error body echoed a key"
    return body


def protected_operations(system: RunningSystem) -> list[tuple[str, str]]:
    """(method, concrete path) of every operation that needs a key, path parameters filled in."""
    document = httpx.get(f"{system.base_url}/openapi.json", timeout=TIMEOUT).json()
    operations = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path.startswith(OPEN_PREFIXES) or operation.get("security") == []:
                continue
            concrete = re.sub(r"\{version\}", "1", path)
            concrete = re.sub(r"\{device_id\}", "some-device", concrete)
            concrete = re.sub(r"\{[a-z_]+\}", str(uuid.uuid4()), concrete)
            operations.append((method.upper(), concrete))
    return operations


def test_every_protected_operation_refuses_bad_keys_with_401(
        system: RunningSystem, devices: dict[str, tuple[str, str]], store: CassandraFleetStore) -> None:
    operations = protected_operations(system)
    assert len(operations) >= 25, operations
    assert ("POST", "/api/v1/devices/register") not in operations

    _, revoked = devices["revoked"]
    assert httpx.get(f"{system.base_url}/api/v1/status", headers=bearer(revoked), timeout=TIMEOUT).status_code == 200
    # Through the API, as an operator does: the replica has this key cached now, and only the
    # revocation's key event (not a write to Cassandra behind its back) evicts it at once.
    assert httpx.post(f"{system.base_url}/api/v1/keys/{key_id(revoked)}/revoke", headers=bearer(system.admin_key),
                      timeout=TIMEOUT).status_code == 200
    assert store.get_api_key(hash_api_key(revoked)).revoked_at is not None  # type: ignore[union-attr]
    unknown = new_api_key()
    variants: dict[str, dict[str, str]] = {
        "missing": {},
        "bare scheme": {"Authorization": "Bearer"},
        "not bearer": {"Authorization": f"Basic {unknown}"},
        "malformed": bearer("sk_live_short"),
        "malformed charset": bearer("sk_live_" + "!" * 32),
        "unknown": bearer(unknown),
        "revoked": bearer(revoked),
    }
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        for method, path in operations:
            for name, headers in variants.items():
                response = client.request(method, path, headers=headers)
                body = assert_envelope(response, 401, unknown, revoked)
                assert body["error_code"] == "UNAUTHORIZED", (name, method, path, body)
                if name == "revoked":
                    assert "revoked" in body["message"], body


def test_a_device_key_cannot_act_for_another_device(system: RunningSystem, devices: dict[str, tuple[str, str]]) -> None:
    (a_id, a_key), (b_id, b_key) = devices["a"], devices["b"]
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        assert client.get(f"/api/v1/devices/{a_id}", headers=bearer(a_key)).status_code == 200
        assert_envelope(client.get(f"/api/v1/devices/{b_id}", headers=bearer(a_key)), 403, a_key, b_key)
        assert_envelope(client.put(f"/api/v1/devices/{b_id}/heartbeat", headers=bearer(a_key),
                                   json={"status": "active"}), 403, a_key)
        # Jobs belong to the key that submitted them.
        job = client.post(f"/api/v1/infer/{ENCODED_MINILM}/async", headers=bearer(a_key),
                          json={"input_data": {"text": "owned by device a"}, "priority": "high"})
        assert job.status_code == 202, job.text
        job_id = job.json()["job_id"]
        for method, path in (("GET", f"/api/v1/jobs/{job_id}"), ("GET", f"/api/v1/jobs/{job_id}/result"),
                             ("DELETE", f"/api/v1/jobs/{job_id}"), ("POST", f"/api/v1/jobs/{job_id}/cancel")):
            body = assert_envelope(client.request(method, path, headers=bearer(b_key)), 403, a_key, b_key)
            assert body["error_code"] == "FORBIDDEN", body
        assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(a_key)).status_code == 200
        assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(system.admin_key)).status_code == 200
        # Updates: only a device selected for the active round may submit; operators never do.
        started = client.post("/api/v1/training/rounds/start", headers=bearer(system.admin_key),
                              json={"target_devices": 1, "min_devices": 1, "timeout_seconds": 60})
        assert started.status_code in (201, 409), started.text
        round_id = started.json()["id"] if started.status_code == 201 else started.json()["details"]["round_id"]
        try:
            files = {"file": ("update.pt", state_dict_bytes())}
            form = {"num_samples": "10"}
            body = assert_envelope(client.post(f"/api/v1/training/rounds/{round_id}/updates", headers=bearer(a_key),
                                               files=files, data=form), 403, a_key)
            assert body["error_code"] == "DEVICE_NOT_SELECTED", body  # a never heartbeated: never selected
            body = assert_envelope(client.post(f"/api/v1/training/rounds/{round_id}/updates",
                                               headers=bearer(system.admin_key), files=files, data=form), 403)
            assert body["error_code"] == "FORBIDDEN", body
        finally:
            if started.status_code == 201:  # free the single active-round slot for the session's other tests
                cancelled = client.post(f"/api/v1/training/rounds/{round_id}/cancel", headers=bearer(system.admin_key))
                assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text


def state_dict_bytes(size: int = 4) -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(size, 2).state_dict(), buffer)
    return buffer.getvalue()



def test_bad_uploads_are_refused_with_4xx_envelopes(
        system: RunningSystem, devices: dict[str, tuple[str, str]]) -> None:
    admin, (_, device_key) = bearer(system.admin_key), devices["a"]
    limit = system.settings.max_upload_bytes
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        model = client.post("/api/v1/models", headers=admin, json={"framework": "pytorch"})
        assert model.status_code == 201, model.text
        upload = f"/api/v1/models/{model.json()['id']}/versions/upload"
        update = f"/api/v1/training/rounds/{uuid.uuid4()}/updates"  # the file is checked before the round
        good = state_dict_bytes()
        cases: list[tuple[str, dict[str, str], tuple[str, bytes], dict[str, str], int, str]] = [
            ("traversal name", admin, ("../../etc/passwd", good), {}, 400, "INVALID_FILENAME"),
            ("absolute name", admin, ("/etc/passwd", good), {}, 400, "INVALID_FILENAME"),
            ("text as pytorch", admin, ("model.pt", b"just some text, not weights"), {}, 415, "INVALID_MODEL_FILE"),
            ("hdf5 magic as pytorch", admin, ("model.pt", b"\x89HDF\r\n\x1a\n" + b"\0" * 64), {}, 415,
             "INVALID_MODEL_FILE"),
            ("pytorch claimed onnx", admin, ("model.onnx", good), {"format": "onnx"}, 415, "INVALID_MODEL_FILE"),
            ("pickle claimed hdf5", admin, ("model.h5", b"\x80\x04K\x01."), {"format": "tensorflow"}, 415,
             "INVALID_MODEL_FILE"),
            ("zip bomb", admin, ("model.pt", zip_bomb_state_dict(64 * 1024 * 1024)), {}, 415, "INVALID_MODEL_FILE"),
            ("over the file limit", admin, ("model.pt", b"\0" * (limit + 1)), {}, 413, "FILE_TOO_LARGE"),
            ("over the request limit", admin, ("model.pt", b"\0" * (limit + 2 * 1024 * 1024)), {}, 413,
             "REQUEST_TOO_LARGE"),
        ]
        for name, headers, file, form, status, code in cases:
            body = assert_envelope(client.post(upload, headers=headers, files={"file": file}, data=form), status,
                                   system.admin_key)
            assert body["error_code"] == code, (name, body)
        for name, file, status, code in (
                ("traversal name", ("../../etc/passwd", good), 400, "INVALID_FILENAME"),
                ("over the file limit", ("update.pt", b"\0" * (limit + 1)), 413, "FILE_TOO_LARGE"),
                ("over the request limit", ("update.pt", b"\0" * (limit + 2 * 1024 * 1024)), 413,
                 "REQUEST_TOO_LARGE")):
            body = assert_envelope(client.post(update, headers=bearer(device_key), files={"file": file},
                                               data={"num_samples": "5"}), status, device_key)
            assert body["error_code"] == code, (name, body)
        # The same file with a plain name is stored under a key the server chose.
        stored = client.post(upload, headers=admin, files={"file": ("model.pt", good)})
        assert stored.status_code == 201, stored.text
        assert re.fullmatch(r"s3://[^/]+/models/[0-9a-f-]{36}/v\d+/model\.pt", stored.json()["model_path"])


EVIL_MODEL_IDS = ("%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "..%2F..%2Fsecrets", "%2E%2E", "org%2F%2E%2E%2Fx", "a%00b",
                  "a%0Ab", "a%5C..%5Cb", "a%1Fb", "%2Fetc%2Fpasswd")


def test_model_ids_with_traversal_or_control_characters_are_400_or_404(system: RunningSystem) -> None:
    # With the operator key: registry writes are refused to other roles before the id is looked at
    # (tests/unit/test_access_matrix.py), and its limit is far above these requests.
    request = {"input_data": {"text": "x"}, "timeout_seconds": 5}
    key = system.admin_key
    admin = bearer(key)
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        for model_id in EVIL_MODEL_IDS:
            for method, path, body in (
                    ("GET", f"/api/v1/models/{model_id}", None),
                    ("PUT", f"/api/v1/models/{model_id}", {"description": "x"}),
                    ("DELETE", f"/api/v1/models/{model_id}", None),
                    ("POST", f"/api/v1/models/{model_id}/load", None),
                    ("POST", f"/api/v1/models/{model_id}/unload", None),
                    ("POST", f"/api/v1/models/{model_id}/download", None),
                    ("POST", f"/api/v1/infer/{model_id}", request),
                    ("POST", f"/api/v1/infer/{model_id}/async", request)):
                response = client.request(method, path, headers=admin, json=body)
                assert_envelope(response, (400, 404), key)
            decoded = httpx.URL(f"/{model_id}").path[1:]
            response = client.post("/api/v1/pipelines/validate", headers=admin,
                                   json={"pipeline_name": decoded, "config": {}})
            assert_envelope(response, (400, 404))


def test_oversized_json_bodies_are_413(system: RunningSystem, devices: dict[str, tuple[str, str]]) -> None:
    _, key = devices["a"]
    too_big = system.settings.max_request_bytes + 1
    padding = "x" * too_big
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        for path, headers, payload in (
                ("/api/v1/devices/register", {}, {"device_id": padding}),
                ("/api/v1/pipelines/validate", bearer(key), {"pipeline_name": "x", "config": {"pad": padding}}),
                ("/api/v1/learning-graphs/submit", bearer(key), {"encryptedData": padding})):
            body = assert_envelope(client.post(path, headers=headers, json=payload), 413, key)
            assert body["error_code"] == "REQUEST_TOO_LARGE" and body["details"]["max_bytes"] < too_big, body

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"device_id": "'
            for _ in range(too_big // (1024 * 1024) + 1):
                yield b"y" * (1024 * 1024)
            yield b'"}'

        response = client.post("/api/v1/devices/register", content=chunks(),
                               headers={"content-type": "application/json"})
        assert assert_envelope(response, 413)["error_code"] == "REQUEST_TOO_LARGE"


def session_messages(settings: Settings) -> Iterator[tuple[str, bytes]]:
    """(topic, key + value + headers) of every message in every topic of this session, from the start."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for name, metadata in admin.list_topics(timeout=10).topics.items():
        if name.startswith(settings.topic_prefix):
            for message in messages_in(settings, name, metadata.partitions):
                headers = repr(message.headers()).encode()  # keys are ASCII: repr keeps them
                yield name, (message.key() or b"") + (message.value() or b"") + headers


def test_raw_keys_never_reach_logs_or_kafka(system: RunningSystem, devices: dict[str, tuple[str, str]]) -> None:
    # Runs after the tests above in this module (and anything earlier in the session) exercised the keys.
    (_, a_key), (_, b_key) = devices["a"], devices["b"]
    with httpx.Client(base_url=system.base_url, timeout=TIMEOUT) as client:
        for key in (a_key, b_key, system.admin_key):
            assert client.get("/api/v1/status", headers=bearer(key)).status_code == 200
    keys = [a_key, b_key, devices["revoked"][1], system.admin_key]

    logs = [p for p in system.log_dir.rglob("*") if p.is_file()]
    assert logs, system.log_dir
    for path in logs:
        data = path.read_bytes()
        leaked = KEY_PATTERN.findall(data)
        assert not leaked, f"{path} carries raw API keys"

    topics_seen, audit_seen = set(), False
    for topic, data in session_messages(system.settings):
        topics_seen.add(topic)
        assert not KEY_PATTERN.search(data), f"a message on {topic} carries a raw API key"
        if topic.endswith("audit.events") and key_id(a_key).encode() in data:
            audit_seen = True
    assert any(t.endswith("audit.events") for t in topics_seen), topics_seen
    assert audit_seen, "the audit trail names the device's key id (and never its key)"
    for key in keys:
        assert key_id(key) != key and key not in key_id(key)
