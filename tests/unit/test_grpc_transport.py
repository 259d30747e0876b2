"""The gRPC transport over in-memory fakes: a real grpc.aio server and client in this process.

What is checked here is the transport's own work — message conversion, authentication, the
§5.2 status mapping with its details, deadline propagation, stream flow — against the same
domain services REST uses. The real broker, Cassandra and workers are in tests/e2e/test_grpc.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from pydantic import SecretStr

from api.context import AppContext
from api.grpc.calls import REFUSED_STREAM_DRAIN_S
from api.grpc.server import GrpcServer
from consumers.inference.jobs import JobRunner
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.fleet.memory_store import InMemoryFleetStore
from core.serving.jobs import InMemoryJobStore
from core.serving.jobs_service import JobService
from core.serving.service import InferenceService
from messaging.reply_consumer import ReplyTable
from modelmora.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from settings import Settings
from tests.grpc_errors import spec_error
from topology.messages import MessageType

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODELS = {MINILM: "txt2embed", "google/flan-t5-small": "txt2txt"}
ADMIN_KEY = new_api_key()
RATE_LIMIT = 1000


class FakeWorkers:
    """Stands in for the broker and the inference workers: answers each sync request through the
    reply table (embedding = [len(text), 1.0]); text "silent" is never answered, "boom" fails."""

    def __init__(self, replies: ReplyTable) -> None:
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.audits: list[dict[str, Any]] = []

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        if message_type != MessageType.INFERENCE_REQUEST:
            self.events.append((message_type, record))
            return
        self.requests.append(record)
        if record.get("job_id") is None:
            asyncio.get_running_loop().call_later(0.002, self._answer, record)

    def _answer(self, record: dict[str, Any]) -> None:
        text = record["input_data"].get("text")
        if text == "silent":
            return
        reply: dict[str, Any] = {"correlation_id": record["correlation_id"], "model_id": record["model_id"]}
        if text == "boom":
            reply.update(status="error", error={"code": "INFERENCE_FAILED", "message": "the model failed"})
        else:
            reply.update(status="success", output_data={"embedding": [float(len(text or "")), 1.0], "dimensions": 2},
                         metadata={"inference_time_ms": 1.25, "batch_size": 1, "device": "cpu"})
        self.replies.resolve(record["correlation_id"], reply)

    async def audit(self, **record: Any) -> None:
        self.audits.append(record)


class Model:
    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"correlation_id": request["correlation_id"], "model_id": request["model_id"],
                "job_id": request["job_id"], "reply_partition": None, "status": "success",
                "output_data": {"embedding": [3.0, 4.0], "dimensions": 2}, "metadata": {"batch_size": 1}}


class Stack:
    def __init__(self, rate_limit: int = RATE_LIMIT) -> None:
        self.settings = Settings(admin_api_key=SecretStr(ADMIN_KEY), rate_limit_per_minute=rate_limit,
                                 grpc_stream_max_in_flight=16, model_load_wait_s=0.5)
        self.replies = ReplyTable()
        self.replies.assigned([0])
        self.workers = FakeWorkers(self.replies)
        self.job_store = InMemoryJobStore()
        inference = InferenceService(self.settings, self.workers, self.replies, models=MODELS)
        self.ctx = AppContext(settings=self.settings, store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                              events=self.workers, inference=inference,
                              jobs=JobService(self.settings, inference, self.job_store, self.workers))
        # One rate-limit window per test: a minute boundary mid-test would reset the count.
        started = time.time()
        self.ctx.limiter.clock = lambda: started
        self.runner = JobRunner(self.job_store, Model(), worker="w", clock=lambda: datetime.now(UTC))
        self.server = GrpcServer(self.ctx, host="127.0.0.1", port=0)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.inference = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.management = management_pb2_grpc.ManagementServiceStub(self.channel)

    async def device_key(self) -> tuple[tuple[str, str], ...]:
        _, key = await self.ctx.fleet.register_device(f"dev-{uuid.uuid4().hex[:8]}", None, None)
        return bearer(key)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


ADMIN = bearer(ADMIN_KEY)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    built = Stack()
    await built.server.start()
    try:
        yield built
    finally:
        await built.channel.close()
        await built.server.stop(0)


def embed(text: str, **fields: Any) -> inference_pb2.InferenceRequest:
    return inference_pb2.InferenceRequest(model_id=MINILM, input_data=inference_pb2.InputData(text=text), **fields)


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def refused(call: Any) -> tuple[grpc.StatusCode, common_pb2.Error, grpc.aio.AioRpcError]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = spec_error(caught.value)
    assert error is not None, "no grpc-status-details-bin trailer"
    return caught.value.code(), error, caught.value


async def test_infer_answers_with_the_embedding_and_echoes_the_request_id(stack: Stack) -> None:
    response = await stack.inference.Infer(embed("hello", request_id="r-1", priority=common_pb2.PRIORITY_HIGH,
                                                 parameters=struct_pb2.Struct(fields={"normalize": struct_pb2.Value(
                                                     bool_value=True)})),
                                           metadata=ADMIN)
    assert response.model_id == MINILM
    assert list(response.output_data.embedding.values) == [5.0, 1.0]
    assert dict(response.output_data.custom_data) == {"dimensions": 2.0, "request_id": "r-1"}
    assert response.metadata.inference_time_ms == 1.25 and response.metadata.batch_size == 1
    assert response.metadata.total_time_ms > 0 and response.metadata.device == "cpu"
    (request,) = stack.workers.requests
    assert request["priority"] == "high" and request["parameters"] == {"normalize": True}
    assert request["timeout_seconds"] == 60  # proto3's 0 is REST's default


async def test_batch_and_custom_inputs_reach_the_core_as_rest_sends_them(stack: Stack) -> None:
    batch = inference_pb2.InferenceRequest(model_id=MINILM, input_data=inference_pb2.InputData(
        text_batch=inference_pb2.TextBatch(texts=["a", "bb"])))
    await stack.inference.Infer(batch, metadata=ADMIN)
    assert stack.workers.requests[-1]["input_data"] == {"texts": ["a", "bb"]}
    custom = struct_pb2.Struct()
    custom.update({"prompt": "translate", "max_tokens": 64})
    generate = inference_pb2.InferenceRequest(model_id="google/flan-t5-small",
                                              input_data=inference_pb2.InputData(custom_data=custom),
                                              parameters=custom)
    await stack.inference.Infer(generate, metadata=ADMIN)
    sent = stack.workers.requests[-1]
    assert sent["input_data"] == {"prompt": "translate", "max_tokens": 64}
    assert isinstance(sent["parameters"]["max_tokens"], int)  # a Struct double made an int again


async def test_authentication_and_permissions(stack: Stack) -> None:
    code, error, _ = await refused(stack.inference.Infer(embed("x")))
    assert code is grpc.StatusCode.UNAUTHENTICATED and error.code == "UNAUTHORIZED"  # REST's code
    code, error, _ = await refused(stack.inference.Infer(embed("x"), metadata=bearer("sk_live_" + "x" * 32)))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _, _ = await refused(stack.inference.Infer(embed("x"), metadata=(("authorization", ADMIN_KEY),)))
    assert code is grpc.StatusCode.UNAUTHENTICATED  # no "Bearer " scheme
    device = await stack.device_key()
    assert (await stack.inference.Infer(embed("ok"), metadata=device)).output_data.embedding.values
    code, error, _ = await refused(stack.registry.RegisterModel(
        registry_pb2.RegisterModelRequest(model_id="org/m", task_type=common_pb2.TASK_TYPE_TXT2EMBED),
        metadata=device))
    assert code is grpc.StatusCode.PERMISSION_DENIED and error.code == "FORBIDDEN"


def calls(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("tributary_grpc_calls_total", {"method": method, "code": code}) or 0.0


async def test_client_mistakes_are_invalid_argument_or_not_found_with_the_spec_error(stack: Stack) -> None:
    not_found_before, ok_before = calls("Infer", "NOT_FOUND"), calls("Infer", "OK")
    code, error, call = await refused(stack.inference.Infer(
        inference_pb2.InferenceRequest(model_id="nobody/none", input_data=inference_pb2.InputData(text="x")),
        metadata=ADMIN))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "MODEL_NOT_FOUND"
    assert error.trace_id and dict(call.trailing_metadata() or ())["x-trace-id"] == error.trace_id
    code, error, _ = await refused(stack.inference.Infer(
        inference_pb2.InferenceRequest(model_id=MINILM), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_INPUT"
    assert "errors" in error.details
    code, _, _ = await refused(stack.inference.Infer(embed("x", timeout_seconds=601), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, _, _ = await refused(stack.inference.Infer(embed("x", priority=7), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    clash = struct_pb2.Struct()
    clash.update({"text": "other"})
    code, error, _ = await refused(stack.inference.Infer(inference_pb2.InferenceRequest(
        model_id=MINILM, input_data=inference_pb2.InputData(text="x", custom_data=clash)), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "repeats" in error.message
    code, error, _ = await refused(stack.inference.Infer(embed("boom"), metadata=ADMIN))
    assert code is grpc.StatusCode.UNAVAILABLE and error.code == "INFERENCE_FAILED"
    assert calls("Infer", "NOT_FOUND") == not_found_before + 1 and calls("Infer", "OK") == ok_before
    assert not stack.workers.audits or all(a["outcome"] != "error" for a in stack.workers.audits)


async def test_the_call_deadline_becomes_the_request_deadline(stack: Stack) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.inference.Infer(embed("silent", timeout_seconds=60), metadata=ADMIN, timeout=0.6)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    (request,) = stack.workers.requests
    # the worker is told the call's deadline, not timeout_seconds' 60 s
    assert (request["deadline"] - datetime.now(UTC)).total_seconds() < 1.0
    # nothing left waiting for a reply nobody will read (the server side ends a moment after the client's)
    assert await eventually(lambda: stack.replies.waiting == 0)


async def test_a_request_timeout_is_deadline_exceeded(stack: Stack) -> None:
    code, error, _ = await refused(stack.inference.Infer(embed("silent", timeout_seconds=1), metadata=ADMIN))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and error.code == "INFERENCE_TIMEOUT"


async def test_the_rate_limit_is_resource_exhausted_with_retry_info(stack: Stack) -> None:
    from google.rpc import error_details_pb2

    device = await stack.device_key()
    for _ in range(RATE_LIMIT):
        await stack.management.GetSystemStatus(management_pb2.GetSystemStatusRequest(), metadata=device)
    code, error, call = await refused(stack.management.GetSystemStatus(management_pb2.GetSystemStatusRequest(),
                                                                       metadata=device))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.code == "RATE_LIMITED"
    retry = error_details_pb2.RetryInfo()
    status = rpc_status.from_call(call)
    assert status is not None and status.details[1].Unpack(retry) and retry.retry_delay.seconds >= 1
    assert int(dict(call.trailing_metadata() or ())["retry-after"]) >= 1


async def test_stream_answers_every_request_and_keeps_going_after_failures(stack: Stack) -> None:
    texts = [f"text {i}" for i in range(200)]
    requests = [embed(text, request_id=f"id-{i}") for i, text in enumerate(texts)]
    requests.insert(50, inference_pb2.InferenceRequest(model_id="nobody/none", request_id="bad-model",
                                                       input_data=inference_pb2.InputData(text="x")))
    requests.insert(120, embed("boom", request_id="bad-run"))
    answers: dict[str, inference_pb2.InferenceResponse] = {}
    async for response in stack.inference.InferStream(iter(requests), metadata=ADMIN):
        rid = response.output_data.custom_data["request_id"]
        assert rid not in answers
        answers[rid] = response
    assert len(answers) == len(requests)
    for i, text in enumerate(texts):
        assert list(answers[f"id-{i}"].output_data.embedding.values) == [float(len(text)), 1.0]
        assert not answers[f"id-{i}"].HasField("error")
    assert answers["bad-model"].error.code == "MODEL_NOT_FOUND"
    assert answers["bad-model"].error.details["request_id"] == "bad-model"
    assert answers["bad-run"].error.code == "INFERENCE_FAILED"
    assert (REGISTRY.get_sample_value("tributary_grpc_stream_messages_total", {"code": "MODEL_NOT_FOUND"}) or 0) >= 1


async def test_stream_messages_over_the_rate_limit_fail_alone() -> None:
    limited = Stack(rate_limit=10)
    await limited.server.start()
    try:
        device = await limited.device_key()  # the stream's key check counts as one request
        requests = [embed(f"t{i}", request_id=f"r{i}") for i in range(15)]
        answers = [r async for r in limited.inference.InferStream(iter(requests), metadata=device)]
    finally:
        await limited.channel.close()
        await limited.server.stop(0)
    assert len(answers) == 15
    refused_ids = {a.output_data.custom_data["request_id"] for a in answers if a.error.code == "RATE_LIMITED"}
    served = [a for a in answers if not a.HasField("error")]
    assert len(served) == 9 and len(refused_ids) == 6  # 10 per minute, one spent opening the stream


async def test_a_cancelled_stream_leaves_nothing_waiting(stack: Stack) -> None:
    call = stack.inference.InferStream(iter([embed("silent", request_id=f"s{i}") for i in range(5)]),
                                       metadata=ADMIN)
    assert await eventually(lambda: stack.replies.waiting == 5)  # all in flight, none will be answered
    call.cancel()
    assert await eventually(lambda: stack.replies.waiting == 0)


async def test_stream_without_a_key_ends_unauthenticated(stack: Stack) -> None:
    call = stack.inference.InferStream(iter([embed("x")]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_refused_streams_still_sending_get_their_status_not_internal(stack: Stack) -> None:
    # grpc/grpc#36066: a client write failing as the call ends used to turn ~30 % of these into INTERNAL.
    async def refused() -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stack.inference.InferStream(iter([embed("x")] * 20)):
                pass
        return caught.value.code()

    codes = [code for _ in range(5) for code in await asyncio.gather(*[refused() for _ in range(20)])]
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 100


async def test_a_refused_stream_that_never_half_closes_is_ended_within_the_bound(stack: Stack) -> None:
    async def endless() -> AsyncIterator[inference_pb2.InferenceRequest]:
        while True:
            yield embed("x")
            await asyncio.sleep(0.01)

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stack.inference.InferStream(endless()):
            pass
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert REFUSED_STREAM_DRAIN_S <= time.monotonic() - started < REFUSED_STREAM_DRAIN_S + 2


async def test_stream_requests_without_ids_get_one(stack: Stack) -> None:
    ids = [r.output_data.custom_data["request_id"]
           async for r in stack.inference.InferStream(iter([embed("a"), embed("b")]), metadata=ADMIN)]
    assert len(set(ids)) == 2 and all(uuid.UUID(i) for i in ids)


async def test_async_jobs(stack: Stack) -> None:
    device = await stack.device_key()
    reference = await stack.inference.InferAsync(embed("later", priority=common_pb2.PRIORITY_LOW), metadata=device)
    assert reference.status == common_pb2.JOB_STATUS_QUEUED and reference.created_at.seconds > 0
    status = await stack.inference.GetJobStatus(inference_pb2.GetJobStatusRequest(job_id=reference.job_id),
                                                metadata=device)
    assert status.model_id == MINILM and status.status == common_pb2.JOB_STATUS_QUEUED
    code, error, _ = await refused(stack.inference.GetJobResult(
        inference_pb2.GetJobResultRequest(job_id=reference.job_id), metadata=device))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and error.code == "JOB_NOT_READY"
    request = next(r for r in stack.workers.requests if r.get("job_id") == reference.job_id)
    await stack.runner.run(request)
    result = await stack.inference.GetJobResult(inference_pb2.GetJobResultRequest(job_id=reference.job_id),
                                                metadata=device)
    assert list(result.output_data.embedding.values) == [3.0, 4.0]
    done = await stack.inference.GetJobStatus(inference_pb2.GetJobStatusRequest(job_id=reference.job_id),
                                              metadata=device)
    assert done.status == common_pb2.JOB_STATUS_COMPLETED and done.progress == 100
    code, error, _ = await refused(stack.inference.CancelJob(
        inference_pb2.CancelJobRequest(job_id=reference.job_id), metadata=device))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and error.code == "JOB_ALREADY_COMPLETED"
    other = await stack.device_key()
    code, _, _ = await refused(stack.inference.GetJobStatus(
        inference_pb2.GetJobStatusRequest(job_id=reference.job_id), metadata=other))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = await refused(stack.inference.GetJobStatus(inference_pb2.GetJobStatusRequest(job_id="nope"),
                                                            metadata=device))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, error, _ = await refused(stack.inference.GetJobStatus(
        inference_pb2.GetJobStatusRequest(job_id=str(uuid.uuid4())), metadata=device))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "JOB_NOT_FOUND"
    queued = await stack.inference.InferAsync(embed("never"), metadata=device)
    cancelled = await stack.inference.CancelJob(inference_pb2.CancelJobRequest(job_id=queued.job_id), metadata=device)
    assert cancelled.status == common_pb2.JOB_STATUS_CANCELLED


async def test_registry(stack: Stack) -> None:
    config = struct_pb2.Struct()
    config.update({"max_length": 256})
    register = registry_pb2.RegisterModelRequest(
        model_id="org/embedder", version="v1", task_type=common_pb2.TASK_TYPE_TXT2EMBED, display_name="Embedder",
        source_url="https://example.org/embedder", config=config,
        resource_requirements=common_pb2.ResourceRequirements(memory_mb=512, cpu_threads=2))
    model = await stack.registry.RegisterModel(register, metadata=ADMIN)
    assert (model.model_id, model.version, model.task_type, model.status) == (
        "org/embedder", "v1", common_pb2.TASK_TYPE_TXT2EMBED, "registered")
    assert model.resource_requirements.memory_mb == 512 and model.config["max_length"] == 256
    code, error, _ = await refused(stack.registry.RegisterModel(register, metadata=ADMIN))
    assert code is grpc.StatusCode.ALREADY_EXISTS and error.code == "MODEL_ALREADY_EXISTS"
    code, error, _ = await refused(stack.registry.RegisterModel(
        registry_pb2.RegisterModelRequest(model_id="org/x"), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_TASK_TYPE"
    code, error, _ = await refused(stack.registry.RegisterModel(
        registry_pb2.RegisterModelRequest(model_id="../etc", task_type=common_pb2.TASK_TYPE_TXT2EMBED),
        metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and error.code == "INVALID_MODEL_ID"
    code, _, _ = await refused(stack.registry.RegisterModel(registry_pb2.RegisterModelRequest(
        model_id="org/y", task_type=common_pb2.TASK_TYPE_TXT2EMBED, version="v" * 65), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT  # REST's own schema limits apply

    for i in range(4):
        await stack.registry.RegisterModel(registry_pb2.RegisterModelRequest(
            model_id=f"org/img-{i}", task_type=common_pb2.TASK_TYPE_IMG2EMBED), metadata=ADMIN)
    page = await stack.registry.ListModels(registry_pb2.ListModelsRequest(
        task_type=common_pb2.TASK_TYPE_IMG2EMBED, pagination=common_pb2.PaginationRequest(page=2, page_size=3)),
        metadata=ADMIN)
    assert [m.model_id for m in page.models] == ["org/img-3"] or len(page.models) == 1
    assert (page.pagination.total, page.pagination.page, page.pagination.total_pages) == (4, 2, 2)
    code, _, _ = await refused(stack.registry.ListModels(registry_pb2.ListModelsRequest(
        pagination=common_pb2.PaginationRequest(page_size=101)), metadata=ADMIN))
    assert code is grpc.StatusCode.INVALID_ARGUMENT

    got = await stack.registry.GetModel(registry_pb2.GetModelRequest(model_id="org/embedder"), metadata=ADMIN)
    assert got.display_name == "Embedder"
    updated = await stack.registry.UpdateModel(registry_pb2.UpdateModelRequest(
        model_id="org/embedder", description="better"), metadata=ADMIN)
    assert updated.description == "better" and updated.display_name == "Embedder"  # empty = unchanged
    # A source_url: the download is handed to the model-download processor (REST: 202) and the status moves.
    assert got.status == "registered"
    started = await stack.registry.DownloadModel(registry_pb2.DownloadModelRequest(model_id="org/embedder"),
                                                 metadata=ADMIN)
    assert started.status == "downloading"
    got = await stack.registry.GetModel(registry_pb2.GetModelRequest(model_id="org/embedder"), metadata=ADMIN)
    assert got.status == "downloading"
    # No stored files and no source_url: nothing could carry the download out, so it is refused (REST: 409).
    code, error, _ = await refused(stack.registry.DownloadModel(
        registry_pb2.DownloadModelRequest(model_id="org/img-0"), metadata=ADMIN))
    assert (code, error.code) == (grpc.StatusCode.FAILED_PRECONDITION, "MODEL_FILES_MISSING")
    lock = await stack.registry.GenerateLock(registry_pb2.GenerateLockRequest(), metadata=ADMIN)
    assert "org/embedder" in [m.model_id for m in lock.models] and lock.generated_at.seconds > 0
    deleted = await stack.registry.DeleteModel(registry_pb2.DeleteModelRequest(model_id="org/embedder"),
                                               metadata=ADMIN)
    assert deleted.deleted
    code, error, _ = await refused(stack.registry.GetModel(registry_pb2.GetModelRequest(model_id="org/embedder"),
                                                           metadata=ADMIN))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "MODEL_NOT_FOUND"


async def test_management(stack: Stack) -> None:
    live = await stack.management.LivenessCheck(management_pb2.LivenessRequest())
    assert live.status == "ok"
    ready = await stack.management.ReadinessCheck(management_pb2.ReadinessRequest())
    assert ready.status == "ready" and ready.checks.database and ready.checks.queue
    health = await stack.management.GetModelHealth(management_pb2.GetModelHealthRequest())
    assert (health.healthy_count, health.unhealthy_count) == (0, 0)
    status = await stack.management.GetSystemStatus(management_pb2.GetSystemStatusRequest(), metadata=ADMIN)
    assert status.version and not status.HasField("memory") and not status.gpu.available
    code, _, _ = await refused(stack.management.GetSystemStatus(management_pb2.GetSystemStatusRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    code, error, _ = await refused(stack.management.LoadModel(management_pb2.LoadModelRequest(model_id="org/none"),
                                                              metadata=ADMIN))
    assert code is grpc.StatusCode.NOT_FOUND and error.code == "MODEL_NOT_FOUND"


async def test_standard_health_follows_readiness_and_reflection_lists_the_services(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    for service in ("", "modelmora.v1.InferenceService", "modelmora.v1.ManagementService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stack.ctx.probes["cassandra"] = lambda: (_ for _ in ()).throw(ConnectionError("down"))
    assert await stack.server.refresh_health() is False
    answer = await health.Check(health_pb2.HealthCheckRequest(service="modelmora.v1.RegistryService"))
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    listed: list[str] = []
    async for reply in reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")])):
        listed += [s.name for s in reply.list_services_response.service]
    assert {"modelmora.v1.InferenceService", "modelmora.v1.RegistryService", "modelmora.v1.ManagementService",
            "grpc.health.v1.Health"} <= set(listed)


async def test_a_taken_port_fails_at_start_instead_of_being_shared(stack: Stack) -> None:
    """gRPC turns SO_REUSEPORT on by default on Linux; two replicas on one port must not both bind."""
    with pytest.raises(RuntimeError, match="Failed to bind"):
        GrpcServer(stack.ctx, host="127.0.0.1", port=stack.server.port)
