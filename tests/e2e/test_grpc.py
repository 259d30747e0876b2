"""Seed 001 §3 over gRPC end to end: a real gRPC client against the ingress process (REST and gRPC
side by side), the real broker, Cassandra, S3 and the three priority workers. Every RPC of the
Inference, Registry and Management services, the standard health service and reflection."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core.serving.builtin_specs import MINILM_ID
from modelmora.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from tests.e2e.conftest import RunningSystem, free_port, ingress_replica
from tests.e2e.serving import HTTP_TIMEOUT, cosine
from tests.grpc_errors import spec_error
from tests.onnx_models import expected, linear_onnx

pytestmark = pytest.mark.e2e
Metadata = tuple[tuple[str, str], ...]
STREAMED = 500


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def channel(system: RunningSystem) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(system.grpc_target) as opened:
        grpc.channel_ready_future(opened).result(timeout=30)
        yield opened


@pytest.fixture
def device(caller: dict[str, str]) -> Metadata:
    """A fresh device key (its own rate-limit window), as gRPC metadata."""
    return (("authorization", caller["Authorization"]),)


def embed(text: str, request_id: str = "", model_id: str = MINILM_ID) -> inference_pb2.InferenceRequest:
    return inference_pb2.InferenceRequest(model_id=model_id, input_data=inference_pb2.InputData(text=text),
                                          priority=common_pb2.PRIORITY_HIGH, timeout_seconds=60,
                                          request_id=request_id)


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, common_pb2.Error]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), spec_error(caught.value) or common_pb2.Error()


def test_infer_returns_the_models_embedding(channel: grpc.Channel, device: Metadata,
                                            reference: Callable[[list[str]], np.ndarray]) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    text = "gRPC carries the same request over the same Kafka path"
    response = stub.Infer(embed(text, request_id="unary-1"), metadata=device, timeout=90)
    assert response.model_id == MINILM_ID and not response.HasField("error")
    assert cosine(list(response.output_data.embedding.values), reference([text])[0]) > 0.999
    assert response.output_data.custom_data["request_id"] == "unary-1"
    assert response.metadata.inference_time_ms > 0 and response.metadata.total_time_ms > 0
    assert response.metadata.batch_size >= 1 and response.metadata.device == "cpu"

    batch = inference_pb2.InferenceRequest(model_id=MINILM_ID, input_data=inference_pb2.InputData(
        text_batch=inference_pb2.TextBatch(texts=["one", "two words"])), priority=common_pb2.PRIORITY_MEDIUM)
    rows = stub.Infer(batch, metadata=device, timeout=90).output_data.embedding_batch.embeddings
    expected_rows = reference(["one", "two words"])
    assert [round(cosine(list(r.values), e), 3) for r, e in zip(rows, expected_rows, strict=True)] == [1.0, 1.0]


def test_auth_failures(channel: grpc.Channel, device: Metadata) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    code, error = refused(lambda: stub.Infer(embed("x"), timeout=30))
    assert code is grpc.StatusCode.UNAUTHENTICATED and error.code == "UNAUTHORIZED" and error.trace_id
    code, _ = refused(lambda: stub.Infer(embed("x"), metadata=bearer("sk_live_" + "0" * 32), timeout=30))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _ = refused(lambda: stub.Infer(embed("x"), metadata=bearer("not-a-key"), timeout=30))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    registry = registry_pb2_grpc.RegistryServiceStub(channel)
    code, error = refused(lambda: registry.RegisterModel(registry_pb2.RegisterModelRequest(
        model_id="org/not-mine", task_type=common_pb2.TASK_TYPE_TXT2EMBED), metadata=device, timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED and error.code == "FORBIDDEN"


def test_deadlines(channel: grpc.Channel, device: Metadata) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    started = time.monotonic()
    code, _ = refused(lambda: stub.Infer(embed("too little time"), metadata=device, timeout=0.005))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started < 5
    # The channel and the key still work right after.
    assert stub.Infer(embed("after a deadline"), metadata=device, timeout=90).output_data.embedding.values


def test_a_stream_of_500_requests_is_answered_completely(system: RunningSystem, device: Metadata,
                                                         reference: Callable[[list[str]], np.ndarray]) -> None:
    """One InferStream call: 500 requests in flight (64 at a time), answered in any order with their
    request ids; two bad requests get per-message errors and the stream goes on. On its own ingress
    replica with a high rate limit: every stream message counts as a request (100 per minute here),
    and with a device key of its own, since the per-key window is shared by every replica."""
    port = free_port()
    texts = [f"stream sentence number {i} about device fleets" for i in range(STREAMED)]
    requests = [embed(text, request_id=f"s-{i}") for i, text in enumerate(texts)]
    requests.insert(100, embed("x", request_id="bad-model", model_id="nobody/none"))
    requests.insert(300, inference_pb2.InferenceRequest(model_id=MINILM_ID, request_id="bad-input"))
    with ingress_replica(system, "grpc-stream", grpc_port=port, TRIBUTARY_RATE_LIMIT_PER_MINUTE="100000"), \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        started = time.perf_counter()
        answers: dict[str, inference_pb2.InferenceResponse] = {}
        order: list[str] = []
        for response in stub.InferStream(iter(requests), metadata=device, timeout=300):
            request_id = response.output_data.custom_data["request_id"]
            assert request_id not in answers, f"{request_id} answered twice"
            answers[request_id] = response
            order.append(request_id)
        elapsed = time.perf_counter() - started
    assert len(answers) == STREAMED + 2
    assert answers["bad-model"].error.code == "MODEL_NOT_FOUND"
    assert answers["bad-input"].error.code == "INVALID_INPUT"
    assert all(not answers[f"s-{i}"].HasField("error") for i in range(STREAMED))
    sample = list(range(0, STREAMED, 25))
    expected_rows = reference([texts[i] for i in sample])
    for i, row in zip(sample, expected_rows, strict=True):
        assert cosine(list(answers[f"s-{i}"].output_data.embedding.values), row) > 0.999
    sent_order = [r.request_id for r in requests]
    print(f"\n{STREAMED} streamed requests answered in {elapsed:.2f}s ({STREAMED / elapsed:.0f}/s); "
          f"{sum(a != b for a, b in zip(order, sent_order, strict=True))} answered out of order")


def test_async_jobs(channel: grpc.Channel, device: Metadata,
                    reference: Callable[[list[str]], np.ndarray]) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    text = "a job submitted over gRPC"
    job = stub.InferAsync(embed(text), metadata=device, timeout=30)
    assert job.status == common_pb2.JOB_STATUS_QUEUED and uuid.UUID(job.job_id)
    deadline = time.monotonic() + 90
    status = stub.GetJobStatus(inference_pb2.GetJobStatusRequest(job_id=job.job_id), metadata=device, timeout=30)
    while status.status in (common_pb2.JOB_STATUS_QUEUED, common_pb2.JOB_STATUS_PROCESSING):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
        status = stub.GetJobStatus(inference_pb2.GetJobStatusRequest(job_id=job.job_id), metadata=device, timeout=30)
    assert status.status == common_pb2.JOB_STATUS_COMPLETED and status.progress == 100
    assert status.model_id == MINILM_ID and status.completed_at.seconds >= status.created_at.seconds
    result = stub.GetJobResult(inference_pb2.GetJobResultRequest(job_id=job.job_id), metadata=device, timeout=30)
    assert cosine(list(result.output_data.embedding.values), reference([text])[0]) > 0.999
    code, error = refused(lambda: stub.CancelJob(inference_pb2.CancelJobRequest(job_id=job.job_id),
                                                 metadata=device, timeout=30))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and error.code == "JOB_ALREADY_COMPLETED"
    code, error = refused(lambda: stub.GetJobResult(inference_pb2.GetJobResultRequest(job_id=str(uuid.uuid4())),
                                                    metadata=device, timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "JOB_NOT_FOUND"
    # A job whose deadline cannot be met is still cancellable while queued or running.
    slow = stub.InferAsync(inference_pb2.InferenceRequest(
        model_id=MINILM_ID, input_data=inference_pb2.InputData(text=text), priority=common_pb2.PRIORITY_LOW),
        metadata=device, timeout=30)
    outcome = refused_or(lambda: stub.CancelJob(inference_pb2.CancelJobRequest(job_id=slow.job_id),
                                                metadata=device, timeout=30))
    assert outcome in ("cancelled", "JOB_ALREADY_COMPLETED")  # the worker may have been quicker


def refused_or(call: Callable[[], inference_pb2.CancelJobResponse]) -> str:
    try:
        response = call()
    except grpc.RpcError as exc:
        error = spec_error(exc)
        assert error is not None
        return error.code
    assert response.status == common_pb2.JOB_STATUS_CANCELLED
    return "cancelled"


def test_registry_rpcs(channel: grpc.Channel, system: RunningSystem) -> None:
    stub, admin = registry_pb2_grpc.RegistryServiceStub(channel), bearer(system.admin_key)
    model_id = f"grpc-e2e/embedder-{uuid.uuid4().hex[:6]}"
    config = struct_pb2.Struct()
    config.update({"max_length": 128})
    created = stub.RegisterModel(registry_pb2.RegisterModelRequest(
        model_id=model_id, version="v2.2.2", task_type=common_pb2.TASK_TYPE_TXT2EMBED, display_name="E2E",
        resource_requirements=common_pb2.ResourceRequirements(memory_mb=256), config=config),
        metadata=admin, timeout=30)
    assert (created.model_id, created.version, created.status) == (model_id, "v2.2.2", "registered")
    code, error = refused(lambda: stub.RegisterModel(registry_pb2.RegisterModelRequest(
        model_id=model_id, task_type=common_pb2.TASK_TYPE_TXT2EMBED), metadata=admin, timeout=30))
    assert code is grpc.StatusCode.ALREADY_EXISTS and error.code == "MODEL_ALREADY_EXISTS"

    listed = stub.ListModels(registry_pb2.ListModelsRequest(
        task_type=common_pb2.TASK_TYPE_TXT2EMBED, pagination=common_pb2.PaginationRequest(page=1, page_size=100)),
        metadata=admin, timeout=30)
    assert model_id in [m.model_id for m in listed.models] and listed.pagination.total >= 1
    # REST sees the same catalog entry
    rest = httpx.get(f"{system.base_url}/api/v1/models/{model_id}", timeout=HTTP_TIMEOUT,
                     headers={"Authorization": f"Bearer {system.admin_key}"}).json()
    assert rest["model_id"] == model_id and rest["display_name"] == "E2E"

    assert stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id), metadata=admin,
                         timeout=30).config["max_length"] == 128
    updated = stub.UpdateModel(registry_pb2.UpdateModelRequest(model_id=model_id, description="updated over gRPC"),
                               metadata=admin, timeout=30)
    assert updated.description == "updated over gRPC" and updated.display_name == "E2E"
    code, error = refused(lambda: stub.DownloadModel(registry_pb2.DownloadModelRequest(model_id=model_id),
                                                     metadata=admin, timeout=30))
    assert (code, error.code) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_FILES_MISSING")  # no stored files
    lock = stub.GenerateLock(registry_pb2.GenerateLockRequest(), metadata=admin, timeout=30)
    assert model_id in [m.model_id for m in lock.models]
    assert stub.DeleteModel(registry_pb2.DeleteModelRequest(model_id=model_id, force=True), metadata=admin,
                            timeout=60).deleted
    code, error = refused(lambda: stub.GetModel(registry_pb2.GetModelRequest(model_id=model_id), metadata=admin,
                                                timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "MODEL_NOT_FOUND"
    code, error = refused(lambda: stub.GetModel(registry_pb2.GetModelRequest(model_id="../etc/passwd"),
                                                metadata=admin, timeout=30))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_MODEL_ID"


def test_management_rpcs(channel: grpc.Channel, system: RunningSystem, device: Metadata) -> None:
    """An uploaded ONNX model loaded, served, reported and unloaded through ManagementService."""
    stub, admin = management_pb2_grpc.ManagementServiceStub(channel), bearer(system.admin_key)
    assert stub.LivenessCheck(management_pb2.LivenessRequest(), timeout=30).status == "ok"
    ready = stub.ReadinessCheck(management_pb2.ReadinessRequest(), timeout=30)
    assert ready.status == "ready" and ready.checks.database and ready.checks.queue

    with httpx.Client(base_url=system.base_url, headers={"Authorization": f"Bearer {system.admin_key}"},
                      timeout=HTTP_TIMEOUT) as http:
        model_id = http.post("/api/v1/models", json={"description": "gRPC lifecycle"}).json()["id"]
        uploaded = http.post(f"/api/v1/models/{model_id}/versions/upload",
                             files={"file": ("linear.onnx", linear_onnx())}, data={"format": "onnx"})
        assert uploaded.status_code == 201, uploaded.text

    deadline = time.monotonic() + 120
    while True:  # UNAVAILABLE while the workers are still joining their groups
        try:
            status = stub.LoadModel(management_pb2.LoadModelRequest(model_id=model_id), metadata=admin, timeout=90)
            break
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert status.state == common_pb2.MODEL_STATE_LOADED and status.health_status.healthy
    assert status.memory_usage_mb > 0 and status.device == "cpu"

    rows = [[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]]
    inputs = struct_pb2.Struct()
    inputs.update({"inputs": rows})
    served = inference_pb2_grpc.InferenceServiceStub(channel).Infer(inference_pb2.InferenceRequest(
        model_id=model_id, input_data=inference_pb2.InputData(custom_data=inputs),
        priority=common_pb2.PRIORITY_HIGH), metadata=device, timeout=90)
    outputs = [list(row) for row in served.output_data.custom_data["outputs"]]
    np.testing.assert_allclose(outputs, expected(rows), rtol=1e-5)

    health = stub.GetModelHealth(management_pb2.GetModelHealthRequest(), timeout=30)
    assert model_id in {m.model_id for m in health.models}
    assert health.healthy_count + health.unhealthy_count == len(health.models)
    system_status = stub.GetSystemStatus(management_pb2.GetSystemStatusRequest(), metadata=admin, timeout=30)
    assert model_id in {m.model_id for m in system_status.loaded_models}
    assert system_status.uptime_seconds >= 0 and not system_status.HasField("memory")
    assert system_status.queue.high_priority >= 0

    unloaded = stub.UnloadModel(management_pb2.UnloadModelRequest(model_id=model_id), metadata=admin, timeout=90)
    assert unloaded.unloaded and unloaded.model_id == model_id
    code, error = refused(lambda: stub.UnloadModel(management_pb2.UnloadModelRequest(model_id=model_id),
                                                   metadata=admin, timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "MODEL_NOT_LOADED"
    code, _ = refused(lambda: stub.LoadModel(management_pb2.LoadModelRequest(model_id=model_id), metadata=device,
                                             timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_standard_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "modelmora.v1.InferenceService", "modelmora.v1.RegistryService",
                    "modelmora.v1.ManagementService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
    code, _ = refused(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30))
    assert code is grpc.StatusCode.NOT_FOUND
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=30)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"modelmora.v1.InferenceService", "modelmora.v1.RegistryService", "modelmora.v1.ManagementService",
            "grpc.health.v1.Health"} <= names
