"""Async jobs without Kafka or Cassandra: the domain service, the worker's JobRunner and the REST routes.

The real-broker/real-Cassandra path is tests/e2e/test_async_jobs.py; the store suite is
tests/job_store_contract.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from consumers.inference.jobs import JobRunner
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.auth import Principal
from core.errors import DomainError, ErrorKind
from core.events import EventsUnavailable
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import SubjectType
from core.serving.jobs import InMemoryJobStore, JobStatus
from core.serving.jobs_service import JobService
from core.serving.service import InferenceService
from messaging.reply_consumer import ReplyTable
from schemas.codec import Codec, new_envelope
from settings import Settings
from topology.messages import MESSAGES, MessageType

pytestmark = pytest.mark.unit

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODELS = {MINILM: "txt2embed"}
OWNER = Principal("key-owner", SubjectType.DEVICE, "dev-1")
STRANGER = Principal("key-other", SubjectType.DEVICE, "dev-2")
OPERATOR = Principal("key-op", SubjectType.OPERATOR, "operator")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Broker:
    """Stands in for KafkaEventSink: keeps requests, job events and audit records."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.job_events: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []
        self.fail_publish: Exception | None = None

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        route = MESSAGES[message_type]
        if message_type == MessageType.JOB_EVENT:
            assert route.topic_for(record).name == "tributary.jobs.events" and route.key_for(record) == record["job_id"]
            self.job_events.append(record)
            return
        if self.fail_publish is not None:
            raise self.fail_publish
        assert message_type == MessageType.INFERENCE_REQUEST
        self.requests.append((route.topic_for(record).name, record))

    async def audit(self, *, actor: str, action: str, subject: str, outcome: str,
                    before: dict[str, Any] | None = None, after: dict[str, Any] | None = None) -> None:
        self.audits.append({"actor": actor, "action": action, "subject": subject, "before": before, "after": after})


class Model:
    """The worker's answerer: counts runs; can wait on an event to simulate a long inference."""

    def __init__(self, status: str = "success") -> None:
        self.runs = 0
        self.status = status
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        self.runs += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        reply = {"correlation_id": request["correlation_id"], "model_id": request["model_id"],
                 "job_id": request["job_id"], "reply_partition": None, "status": self.status}
        if self.status == "success":
            return {**reply, "output_data": {"embedding": [0.6, 0.8], "dimensions": 2},
                    "metadata": {"inference_time_ms": 1.5, "batch_size": 1, "device": "cpu"}}
        return {**reply, "error": {"code": "INFERENCE_TIMEOUT", "message": "deadline passed; not run"}}


def make(status: str = "success") -> tuple[JobService, InMemoryJobStore, Broker, JobRunner, Model]:
    store, broker, model = InMemoryJobStore(), Broker(), Model(status)
    inference = InferenceService(Settings(), broker, ReplyTable(), models=MODELS, clock=lambda: T0)
    service = JobService(Settings(), inference, store, broker, clock=lambda: T0)
    runner = JobRunner(lambda: store, model, worker="worker-1", clock=lambda: T0 + timedelta(seconds=1))
    return service, store, broker, runner, model


async def test_submit_queues_a_job_and_publishes_an_async_request() -> None:
    service, store, broker, _, _ = make()
    reference = await service.submit(OWNER, MINILM, {"text": "hi"}, {"normalize": True}, "high", 30)
    job_id = reference["job_id"]
    assert reference == {"job_id": job_id, "status": "queued", "created_at": T0,
                         "status_url": f"/api/v1/jobs/{job_id}"}
    ((topic, record),) = broker.requests
    assert topic == "modelmora.inference.requests.high"
    assert record["job_id"] == job_id and record["reply_partition"] is None and record["correlation_id"] == job_id
    assert record["deadline"] == T0 + timedelta(seconds=30) and record["client_id"] == "key-owner"
    Codec().encode("inference_request", {**new_envelope(service="t", instance="t"), **record})
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.QUEUED and job.owner_key_id == "key-owner"
    assert [e["status"] for e in broker.job_events] == ["queued"]
    assert broker.audits[0]["action"] == "inference.job.submit" and broker.audits[0]["actor"] == "key-owner"


async def test_a_job_runs_once_and_its_result_is_served() -> None:
    service, _, broker, runner, model = make()
    job_id = (await service.submit(OWNER, MINILM, {"text": "hi"}))["job_id"]
    _, request = broker.requests[0]
    running: list[dict[str, Any]] = []

    async def on_claimed(event: dict[str, Any]) -> None:
        running.append(event)

    outcome = await runner.run(request, on_claimed=on_claimed)
    assert outcome.response is not None and outcome.event is not None
    assert outcome.event["status"] == "completed" and outcome.event["progress"] == 100.0
    assert [e["status"] for e in running] == ["running"]  # job_event v1 names processing "running"
    status = await service.status(OWNER, job_id)
    assert status["status"] == "completed" and status["progress"] == 100.0
    assert status["started_at"] == T0 + timedelta(seconds=1) and status["completed_at"] == T0 + timedelta(seconds=1)
    result = await service.result(OWNER, job_id)
    assert result == {"model_id": MINILM, "output_data": {"embedding": [0.6, 0.8], "dimensions": 2},
                      "metadata": {"inference_time_ms": 1.5, "batch_size": 1, "device": "cpu"}}
    # A re-delivered request (crash before commit) finds a terminal job: not run again.
    again = await runner.run(request)
    assert again.response is None and model.runs == 1 and runner.skipped == 1


async def test_a_cancelled_queued_job_is_never_run() -> None:
    service, _, broker, runner, model = make()
    job_id = (await service.submit(OWNER, MINILM, {"text": "hi"}))["job_id"]
    cancelled = await service.cancel(OWNER, job_id)
    assert cancelled == {"job_id": job_id, "status": "cancelled", "cancelled_at": T0,
                         "message": "Job cancelled before it ran."}
    outcome = await runner.run(broker.requests[0][1])
    assert outcome.response is None and model.runs == 0
    # Idempotent cancel; DELETE on a terminal job is 409; the result never comes.
    again = await service.cancel(OWNER, job_id)
    assert again["status"] == "cancelled" and again["message"] == "Job was already cancelled."
    with pytest.raises(DomainError) as deleted:
        await service.delete(OWNER, job_id)
    assert (deleted.value.kind, deleted.value.code) == (ErrorKind.CONFLICT, "JOB_ALREADY_COMPLETED")
    with pytest.raises(DomainError) as result:
        await service.result(OWNER, job_id)
    assert result.value.code == "JOB_CANCELLED" and result.value.details == {"status": "cancelled"}
    assert [a["action"] for a in broker.audits] == ["inference.job.submit", "inference.job.cancel"]


async def test_a_job_cancelled_while_running_keeps_no_result() -> None:
    service, _, broker, runner, model = make()
    model.gate = asyncio.Event()
    job_id = (await service.submit(OWNER, MINILM, {"text": "hi"}))["job_id"]
    run = asyncio.create_task(runner.run(broker.requests[0][1]))
    await asyncio.wait_for(model.started.wait(), 5)
    assert (await service.status(OWNER, job_id))["status"] == "processing"
    deleted = await service.delete(OWNER, job_id)
    assert deleted == {"job_id": job_id, "status": "cancelled"}
    model.gate.set()
    outcome = await run
    assert outcome.response is None and runner.superseded == 1
    assert (await service.status(OWNER, job_id))["status"] == "cancelled"


async def test_a_failed_job_reports_its_error() -> None:
    service, _, broker, runner, _ = make(status="failure")
    job_id = (await service.submit(OWNER, MINILM, {"text": "hi"}))["job_id"]
    outcome = await runner.run(broker.requests[0][1])
    assert outcome.event is not None and outcome.event["status"] == "failed"
    status = await service.status(OWNER, job_id)
    assert status["error"] == {"code": "INFERENCE_TIMEOUT", "message": "deadline passed; not run"}
    with pytest.raises(DomainError) as result:
        await service.result(OWNER, job_id)
    assert result.value.code == "JOB_FAILED" and result.value.details is not None
    assert result.value.details["error"]["code"] == "INFERENCE_TIMEOUT"
    cancel = await service.cancel(OWNER, job_id)
    assert cancel["status"] == "failed" and cancel["cancelled_at"] is None


async def test_not_ready_unknown_and_foreign_jobs() -> None:
    service, _, _, _, _ = make()
    job_id = (await service.submit(OWNER, MINILM, {"text": "hi"}))["job_id"]
    with pytest.raises(DomainError) as not_ready:
        await service.result(OWNER, job_id)
    assert (not_ready.value.code, not_ready.value.details) == ("JOB_NOT_READY", {"status": "queued"})
    with pytest.raises(DomainError) as foreign:
        await service.status(STRANGER, job_id)
    assert foreign.value.kind is ErrorKind.FORBIDDEN
    assert (await service.status(OPERATOR, job_id))["job_id"] == job_id  # operators see every job
    with pytest.raises(DomainError) as unknown:
        await service.cancel(OWNER, str(uuid.uuid4()))
    assert (unknown.value.kind, unknown.value.code) == (ErrorKind.NOT_FOUND, "JOB_NOT_FOUND")


async def test_invalid_requests_create_no_job_and_a_broker_outage_leaves_none_behind() -> None:
    service, store, broker, _, _ = make()
    with pytest.raises(DomainError) as unknown_model:
        await service.submit(OWNER, "no/such-model", {"text": "hi"})
    assert unknown_model.value.code == "MODEL_NOT_FOUND"
    with pytest.raises(DomainError) as bad_input:
        await service.submit(OWNER, MINILM, {"text": 3})
    assert bad_input.value.kind is ErrorKind.INVALID
    broker.fail_publish = EventsUnavailable("broker down", 3.0)
    with pytest.raises(DomainError) as down:
        await service.submit(OWNER, MINILM, {"text": "hi"})
    assert (down.value.kind, down.value.retry_after_s) == (ErrorKind.UNAVAILABLE, 3.0)
    assert store._jobs == {} and broker.requests == []


# --- REST ----------------------------------------------------------------------------------------
ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def api() -> Iterator[tuple[TestClient, Broker, JobRunner]]:
    settings = Settings(admin_api_key=SecretStr(ADMIN_KEY))
    store, broker = InMemoryJobStore(), Broker()
    inference = InferenceService(settings, broker, ReplyTable(), models=MODELS)
    ctx = AppContext(settings=settings, store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                     events=broker, inference=inference,
                     jobs=JobService(settings, inference, store, broker))
    runner = JobRunner(store, Model(), worker="w", clock=lambda: datetime.now(UTC))
    with TestClient(create_app(settings, ctx)) as client:
        yield client, broker, runner


@pytest.mark.parametrize("path", [MINILM, "sentence-transformers%2Fall-MiniLM-L6-v2"])
def test_async_route_is_not_taken_for_a_sync_model_id(api: tuple[TestClient, Broker, JobRunner], path: str) -> None:
    client, broker, _ = api
    response = client.post(f"/api/v1/infer/{path}/async", json={"input_data": {"text": "hi"}}, headers=ADMIN)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["status_url"] == f"/api/v1/jobs/{body['job_id']}"
    assert broker.requests[0][1]["model_id"] == MINILM


def test_job_routes_follow_seeds_001_and_004(api: tuple[TestClient, Broker, JobRunner]) -> None:
    client, broker, runner = api
    job_id = client.post(f"/api/v1/infer/{MINILM}/async", json={"input_data": {"text": "hi"}},
                         headers=ADMIN).json()["job_id"]
    status = client.get(f"/api/v1/jobs/{job_id}", headers=ADMIN)
    assert status.status_code == 200 and status.json()["status"] == "queued" and status.json()["progress"] == 0
    not_ready = client.get(f"/api/v1/jobs/{job_id}/result", headers=ADMIN)
    assert not_ready.status_code == 409
    assert not_ready.json()["error_code"] == "JOB_NOT_READY" and not_ready.json()["status"] == "queued"
    asyncio.run(runner.run(broker.requests[0][1]))
    result = client.get(f"/api/v1/jobs/{job_id}/result", headers=ADMIN)
    assert result.status_code == 200 and result.json()["output_data"]["embedding"] == [0.6, 0.8]
    cancel = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=ADMIN)
    assert cancel.status_code == 200 and cancel.json()["status"] == "completed"
    conflict = client.delete(f"/api/v1/jobs/{job_id}", headers=ADMIN)
    assert conflict.status_code == 409 and conflict.json()["error_code"] == "JOB_ALREADY_COMPLETED"
    assert client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=ADMIN).status_code == 404
    malformed = client.get("/api/v1/jobs/not-a-uuid", headers=ADMIN)
    assert malformed.status_code == 400 and malformed.json()["error_code"] == "VALIDATION_ERROR"
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 401


def test_delete_cancels_a_queued_job(api: tuple[TestClient, Broker, JobRunner]) -> None:
    client, broker, runner = api
    job_id = client.post(f"/api/v1/infer/{MINILM}/async", json={"input_data": {"text": "hi"}},
                         headers=ADMIN).json()["job_id"]
    deleted = client.delete(f"/api/v1/jobs/{job_id}", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json() == {"job_id": job_id, "status": "cancelled"}
    assert asyncio.run(runner.run(broker.requests[0][1])).response is None
    gone = client.get(f"/api/v1/jobs/{job_id}/result", headers=ADMIN)
    assert gone.status_code == 409 and gone.json()["status"] == "cancelled"
