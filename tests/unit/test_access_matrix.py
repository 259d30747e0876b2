"""Every role and every operation: allowed, or 403, generated from the OpenAPI document (REST) and from
the service descriptors (gRPC), so a new route or method cannot be forgotten: it fails here until
``EXPECTED`` (what each role may do, written out on its own, not read from ``api.access``) names it.

Requests go through the real app on in-memory stores, each with a fresh device and service key; the
path parameters are filled so that a device names its own device. A call that is allowed may still
fail for its own reasons (404, 422, 409, 503 where a test wires no inference); it must not be 403.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from api.grpc.calls import OPEN_METHODS
from core.api_keys import new_api_key
from core.fleet.models import SubjectType
from modelmora.v1 import inference_pb2, management_pb2, registry_pb2
from settings import Settings
from tests.memory_app import app_client, memory_context

pytestmark = pytest.mark.unit

ADMIN_KEY = new_api_key()
OPEN = "open"
D, S, OP = "device", "service", "operator"
ALL = {D, S, OP}

EXPECTED: dict[tuple[str, str], set[str] | str] = {
    # probes, metrics and registration answer without a key
    ("GET", "/api/v1/health"): OPEN, ("GET", "/health/live"): OPEN, ("GET", "/api/v1/health/live"): OPEN,
    ("GET", "/health/ready"): OPEN, ("GET", "/api/v1/health/ready"): OPEN, ("GET", "/health/models"): OPEN,
    ("GET", "/api/v1/health/models"): OPEN, ("GET", "/metrics"): OPEN, ("GET", "/api/v1/metrics"): OPEN,
    ("POST", "/api/v1/devices/register"): OPEN,
    ("GET", "/api/v1/status"): ALL,
    ("POST", "/api/v1/pipelines/validate"): ALL,
    # devices: a device acts for itself, operators for any; service keys are not devices
    ("GET", "/api/v1/devices"): {OP},
    ("GET", "/api/v1/devices/{device_id}"): {D, OP},
    ("PUT", "/api/v1/devices/{device_id}/heartbeat"): {D, OP},
    ("POST", "/api/v1/devices/{device_id}/keys/rotate"): {D, OP},
    ("DELETE", "/api/v1/devices/{device_id}"): {OP},
    ("GET", "/api/v1/devices/{device_id}/assignment"): {D, OP},
    ("POST", "/api/v1/devices/{device_id}/telemetry"): {D, OP},
    # staged rollouts: operators only
    ("POST", "/api/v1/rollouts"): {OP},
    ("GET", "/api/v1/rollouts"): {OP},
    ("GET", "/api/v1/rollouts/{rollout_id}"): {OP},
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): {OP},
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): {OP},
    ("POST", "/api/v1/rollouts/{rollout_id}/advance"): {OP},
    ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): {OP},
    # training: devices take part, operators run rounds; an update comes from a device only
    ("POST", "/api/v1/training/rounds/start"): {OP},
    ("POST", "/api/v1/training/rounds/{round_id}/cancel"): {OP},
    ("GET", "/api/v1/training/rounds/current"): {D, OP},
    ("GET", "/api/v1/training/rounds/{round_id}/status"): {D, OP},
    ("POST", "/api/v1/training/rounds/{round_id}/updates"): {D},
    ("POST", "/api/v1/learning-graphs/submit"): {D, OP},
    # LoRA training jobs make registry models: operators only
    ("POST", "/api/v1/training/jobs"): {OP}, ("GET", "/api/v1/training/jobs"): {OP},
    ("GET", "/api/v1/training/jobs/{job_id}"): {OP}, ("GET", "/api/v1/training/jobs/{job_id}/metrics"): {OP},
    ("POST", "/api/v1/training/jobs/{job_id}/cancel"): {OP},
    # catalog reads for everyone; registry writes for operators
    ("GET", "/api/v1/models"): ALL,
    ("GET", "/api/v1/models/latest"): ALL,
    ("GET", "/api/v1/models/{model_id}"): ALL,
    ("GET", "/api/v1/models/{model_id}/versions/{version}/download"): ALL,
    ("POST", "/api/v1/models/lock"): ALL,
    ("POST", "/api/v1/models"): {OP},
    ("PUT", "/api/v1/models/{model_id}"): {OP},
    ("DELETE", "/api/v1/models/{model_id}"): {OP},
    ("POST", "/api/v1/models/{model_id}/versions/upload"): {OP},
    ("POST", "/api/v1/models/{model_id}/download"): {OP},
    ("POST", "/api/v1/models/{model_id}/load"): {OP},
    ("POST", "/api/v1/models/{model_id}/unload"): {OP},
    ("GET", "/api/v1/models/{model_id}/routing-policy"): ALL,
    ("PUT", "/api/v1/models/{model_id}/routing-policy"): {OP},
    # serving: services are what it is for; devices may fall back to the cloud
    ("POST", "/api/v1/infer/{model_id}"): ALL,
    ("POST", "/api/v1/infer/{model_id}/async"): ALL,
    ("POST", "/api/v1/infer/{model_id}/upload"): ALL,
    ("GET", "/api/v1/jobs/{job_id}"): ALL,
    ("GET", "/api/v1/jobs/{job_id}/result"): ALL,
    ("DELETE", "/api/v1/jobs/{job_id}"): ALL,
    ("POST", "/api/v1/jobs/{job_id}/cancel"): ALL,
    ("POST", "/api/v1/generate"): ALL,
    ("POST", "/v1/chat/completions"): ALL,
    ("POST", "/v1/completions"): ALL,
    # datasets: applications and operators prepare fine-tuning data; devices never see it
    ("POST", "/api/v1/datasets"): {S, OP},
    ("GET", "/api/v1/datasets"): {S, OP},
    ("GET", "/api/v1/datasets/{dataset_id}"): {S, OP},
    ("DELETE", "/api/v1/datasets/{dataset_id}"): {S, OP},
    # key management
    # carbon accounting (seed 003 §5): operators and applications read it, devices do not
    ("GET", "/api/v1/carbon/summary"): {S, OP},
    ("GET", "/api/v1/carbon/jobs/{job_id}"): {S, OP},
    ("GET", "/api/v1/carbon/models/{model_id}"): {S, OP},
    ("POST", "/api/v1/keys"): {OP},
    ("GET", "/api/v1/keys"): {OP},
    ("POST", "/api/v1/keys/{key_id}/rotate"): {OP},
    ("POST", "/api/v1/keys/{key_id}/revoke"): {OP},
    ("DELETE", "/api/v1/keys/{key_id}"): {OP},
}

GRPC_EXPECTED: dict[str, set[str] | str] = {
    "Infer": ALL, "InferAsync": ALL, "InferStream": ALL, "GetJobStatus": ALL, "GetJobResult": ALL, "CancelJob": ALL,
    "ListModels": ALL, "GetModel": ALL, "GenerateLock": ALL, "GetSystemStatus": ALL,
    "RegisterModel": {OP}, "UpdateModel": {OP}, "DeleteModel": {OP}, "DownloadModel": {OP}, "LoadModel": {OP},
    "UnloadModel": {OP},
    "GetModelHealth": OPEN, "LivenessCheck": OPEN, "ReadinessCheck": OPEN,
}


def settings() -> Settings:
    # Limits high enough that the matrix's own requests never meet them.
    return Settings(admin_api_key=SecretStr(ADMIN_KEY), rate_limit_per_minute=100_000, model_load_wait_s=0.2)


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[AppContext, TestClient]]:
    ctx = memory_context(settings())
    with app_client(ctx) as client:
        yield ctx, client


def operations(client: TestClient) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in client.app.openapi()["paths"].items() for method in ops}  # type: ignore[attr-defined]


def test_every_operation_has_an_expected_rule(app: tuple[AppContext, TestClient]) -> None:
    documented = operations(app[1])
    assert documented - EXPECTED.keys() == set(), "operations without an access rule in EXPECTED"
    assert EXPECTED.keys() - documented == set(), "rules for operations the API no longer has"


def test_open_operations_are_open_in_the_openapi_document(app: tuple[AppContext, TestClient]) -> None:
    paths = app[1].app.openapi()["paths"]  # type: ignore[attr-defined]
    for (method, path), rule in EXPECTED.items():
        assert (paths[path][method.lower()].get("security") == []) == (rule == OPEN), (method, path)


@dataclass
class Keys:
    device_id: str
    headers: dict[str, dict[str, str]]


def fresh_keys(ctx: AppContext, client: TestClient) -> Keys:
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    device_key = client.post("/api/v1/devices/register", json={"device_id": device_id}).json()["api_key"]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = client.post("/api/v1/keys", json={"role": "service", "label": "matrix"}, headers=admin)
    assert created.status_code == 201, created.text
    return Keys(device_id, {D: {"Authorization": f"Bearer {device_key}"},
                            S: {"Authorization": f"Bearer {created.json()['api_key']}"}, OP: admin})


def filled(path: str, device_id: str) -> str:
    fillers = {"device_id": device_id, "round_id": str(uuid.uuid4()), "model_id": str(uuid.uuid4()),
               "version": "1", "job_id": str(uuid.uuid4()), "key_id": "key_" + uuid.uuid4().hex[:16],
               "dataset_id": f"ds-{uuid.uuid4().hex}", "rollout_id": str(uuid.uuid4())}
    return re.sub(r"\{(\w+)\}", lambda m: fillers[m[1]], path)


def body_for(method: str, path: str) -> dict[str, Any]:
    if path.endswith("/updates") or path.endswith("/versions/upload"):
        return {"files": {"file": ("m.pt", b"not a model")}, "data": {"num_samples": "5"}}
    return {"json": {}} if method in ("POST", "PUT") else {}


@pytest.mark.parametrize("role", [D, S, OP])
@pytest.mark.parametrize("operation", sorted(k for k, v in EXPECTED.items() if v != OPEN), ids=" ".join)
def test_each_role_is_refused_exactly_where_the_table_says(app: tuple[AppContext, TestClient], role: str,
                                                           operation: tuple[str, str]) -> None:
    ctx, client = app
    method, path = operation
    keys = fresh_keys(ctx, client)
    response = client.request(method, filled(path, keys.device_id), headers=keys.headers[role],
                              **body_for(method, path))
    allowed = role in EXPECTED[operation]
    assert response.status_code != 401, response.text
    if allowed:
        assert response.status_code != 403, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["error_code"] == "FORBIDDEN"


def test_the_grpc_table_names_every_method() -> None:
    methods = {m.name for module in (inference_pb2, registry_pb2, management_pb2)
               for service in module.DESCRIPTOR.services_by_name.values() for m in service.methods}
    assert methods == GRPC_EXPECTED.keys()
    assert {m for m, rule in GRPC_EXPECTED.items() if rule == OPEN} == set(OPEN_METHODS)


def test_each_role_gets_permission_denied_exactly_where_the_grpc_table_says() -> None:
    # On a loop of its own, leaving the thread's current loop (pytest-asyncio's session loop) alone.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_grpc_matrix())
    finally:
        loop.close()


async def _grpc_matrix() -> None:
    from api.grpc.server import GrpcServer

    ctx = memory_context(settings())
    _, device_key = await ctx.fleet.register_device(f"dev-{uuid.uuid4().hex[:8]}", None, None)
    operator = ctx.authenticator.authenticate(ADMIN_KEY)
    service = await ctx.keys.create(operator, SubjectType.SERVICE, "svc", None, None)
    keys = {D: device_key, S: service.api_key, OP: ADMIN_KEY}
    server = GrpcServer(ctx, host="127.0.0.1", port=0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        for module in (inference_pb2, registry_pb2, management_pb2):
            for service_desc in module.DESCRIPTOR.services_by_name.values():
                for method in service_desc.methods:
                    rule = GRPC_EXPECTED[method.name]
                    if rule == OPEN:
                        continue
                    request_cls = getattr(module, method.input_type.name)
                    path = f"/{service_desc.full_name}/{method.name}"
                    for role, key in keys.items():
                        code = await _grpc_code(channel, path, request_cls(), method.server_streaming, key)
                        denied = code is grpc.StatusCode.PERMISSION_DENIED
                        assert denied == (role not in rule), (method.name, role, code)
                        assert code is not grpc.StatusCode.UNAUTHENTICATED, (method.name, role)
    finally:
        await channel.close()
        await server.stop(0)


async def _grpc_code(channel: grpc.aio.Channel, path: str, request: Any, streaming: bool,
                     key: str) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),)
    try:
        if streaming:
            call = channel.stream_stream(path, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=lambda b: b)(iter([request]), metadata=metadata,
                                                                             timeout=5)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=lambda b: b)(request, metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
