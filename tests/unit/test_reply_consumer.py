"""The sync-inference reply path without Kafka: the reply table (futures, late replies, revokes),
the inference service over it (deadline, error mapping, re-send), the worker's request handler
and offset tracking, and the REST route."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from consumers.inference.errors import InvalidInputError, ModelLoadError
from consumers.inference.runtime import JsonDict, ModelRuntime
from consumers.inference.worker import BATCH_META, InferenceRequestHandler, OffsetTracker, TimedRuntime
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.auth import Principal
from core.errors import DomainError, ErrorKind
from core.events import EventsUnavailable
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import SubjectType
from core.serving import service as service_module
from core.serving.replies import NoReplyPartition, ReplyConsumerClosed, ReplyPartitionRevoked
from core.serving.service import InferenceService
from messaging.reply_consumer import ReplyTable
from schemas.clock import utcnow
from schemas.codec import Codec, DecodeError, new_envelope
from settings import Settings
from tests.recording_sink import RecordingSink
from topology.messages import MESSAGES, MessageType

pytestmark = pytest.mark.unit

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODELS = {MINILM: "txt2embed", "stabilityai/stable-diffusion-2-1": "txt2img"}
CALLER = Principal("key-1", SubjectType.OPERATOR, "operator")


# --- the reply table ---------------------------------------------------------------------------
async def test_reply_resolves_its_waiter_and_unknown_replies_count_as_late() -> None:
    table = ReplyTable()
    table.assigned([0, 1])
    future = table.expect("c-1", 0)
    assert table.resolve("c-1", {"status": "success"})
    assert await future == {"status": "success"}
    assert not table.resolve("c-1", {"status": "success"})  # a duplicate
    assert not table.resolve("nobody", {})
    assert table.late_replies == 2 and table.waiting == 0


async def test_a_discarded_waiter_turns_its_reply_late() -> None:
    table = ReplyTable()
    table.assigned([3])
    future = table.expect("c-1", 3)
    table.discard("c-1")
    assert future.cancelled()
    assert not table.resolve("c-1", {})
    assert table.late_replies == 1


async def test_owned_partition_is_round_robin_and_none_means_no_partition() -> None:
    table = ReplyTable()
    with pytest.raises(NoReplyPartition):
        table.owned_partition()
    table.assigned([4, 1, 2])
    assert [table.owned_partition() for _ in range(6)] == [1, 2, 4, 1, 2, 4]
    table.expect("c", 1)
    with pytest.raises(ValueError, match="already waiting"):
        table.expect("c", 1)


async def test_revoke_suspends_and_partitions_that_come_back_keep_their_waiters() -> None:
    table = ReplyTable()
    table.assigned([0, 1])
    kept, moved = table.expect("kept", 0), table.expect("moved", 1)
    table.revoked([0, 1])
    assert table.owned == () and table.suspended == (0, 1)
    assert table.owned_partition() in (0, 1)  # still named during the rebalance
    table.assigned([0, 2])
    assert not kept.done()
    with pytest.raises(ReplyPartitionRevoked) as caught:
        await moved
    assert caught.value.partition == 1 and table.revoked_waiters == 1
    table.resolve("kept", {"ok": True})
    assert await kept == {"ok": True}


async def test_no_assignment_within_the_grace_fails_suspended_waiters() -> None:
    table = ReplyTable(suspend_grace_s=0.05)
    table.assigned([5])
    waiter = table.expect("c", 5)
    table.revoked([5])
    with pytest.raises(ReplyPartitionRevoked):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(NoReplyPartition):
        table.owned_partition()


async def test_lost_partitions_fail_at_once_and_close_fails_the_rest() -> None:
    table = ReplyTable()
    table.assigned([0, 1])
    lost, other = table.expect("lost", 0), table.expect("other", 1)
    table.lost([0])
    with pytest.raises(ReplyPartitionRevoked):
        await lost
    table.close_waiters()
    with pytest.raises(ReplyConsumerClosed):
        await other
    with pytest.raises(ReplyConsumerClosed):
        table.owned_partition()


async def test_wait_for_partition_waits_for_the_first_assignment() -> None:
    table = ReplyTable()
    with pytest.raises(TimeoutError):
        await table.wait_for_partition(0.02)
    asyncio.get_running_loop().call_later(0.02, table.assigned, [2])
    assert await table.wait_for_partition(1) == 2


# --- the inference service ---------------------------------------------------------------------
class FakeSink:
    """Publishes nowhere; answers through the reply table like a worker would."""

    def __init__(self, table: ReplyTable, answer: Any = "echo", fail: Exception | None = None) -> None:
        self.table = table
        self.answer = answer
        self.fail = fail
        self.published: list[tuple[str, str, dict[str, Any], str]] = []  # topic, type, record, key

    async def publish(self, message_type: MessageType, record: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        route = MESSAGES[message_type]
        self.published.append((route.topic_for(record).name, message_type, record, route.key_for(record)))
        reply = self.answer(record) if callable(self.answer) else self.reply(record)
        if reply is not None:
            asyncio.get_running_loop().call_soon(self.table.resolve, record["correlation_id"], reply)

    @staticmethod
    def reply(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"correlation_id": record["correlation_id"], "model_id": record["model_id"], "status": "success",
                "output_data": {"embedding": [0.5] * 384, "dimensions": 384},
                "metadata": {"inference_time_ms": 3.2, "batch_size": 2, "device": "cpu", "worker": "w-1"},
                **fields}


def make_service(answer: Any = "echo", fail: Exception | None = None,
                 partitions: tuple[int, ...] = (2,)) -> tuple[InferenceService, FakeSink, ReplyTable]:
    table = ReplyTable()
    if partitions:
        table.assigned(partitions)
    sink = FakeSink(table, answer, fail)
    return InferenceService(Settings(), sink, table, models=MODELS), sink, table


async def test_success_renders_seed_001_inference_response_and_the_request_carries_the_route() -> None:
    service, sink, _ = make_service()
    before = utcnow()
    result = await service.infer(CALLER, MINILM, {"text": "hello"}, {"normalize": True}, "high", 30)
    assert result["model_id"] == MINILM and len(result["output_data"]["embedding"]) == 384
    metadata = result["metadata"]
    assert metadata["inference_time_ms"] == 3.2 and metadata["batch_size"] == 2 and metadata["device"] == "cpu"
    assert metadata["total_time_ms"] >= 0 and metadata["priority"] == "high"
    ((topic, message_type, record, key),) = sink.published
    assert topic == "modelmora.inference.requests.high" and message_type == "inference_request"
    assert key == record["message_id"]
    assert record["reply_partition"] == 2 and record["task_type"] == "txt2embed"
    assert record["client_id"] == "key-1" and record["timeout_seconds"] == 30
    assert timedelta(seconds=29) <= record["deadline"] - before <= timedelta(seconds=31)
    Codec().encode("inference_request", {**new_envelope(service="t", instance="t"), **record})


@pytest.mark.parametrize(("code", "kind", "retry_after"), [
    ("INVALID_INPUT", ErrorKind.INVALID, None),
    ("BATCH_SIZE_EXCEEDED", ErrorKind.INVALID, None),
    ("MODEL_NOT_FOUND", ErrorKind.NOT_FOUND, None),
    ("INFERENCE_TIMEOUT", ErrorKind.TIMEOUT, None),
    ("MODEL_LOAD_FAILED", ErrorKind.UNAVAILABLE, 5.0),
    ("INSUFFICIENT_MEMORY", ErrorKind.UNAVAILABLE, 5.0),
    ("SERVICE_UNAVAILABLE", ErrorKind.UNAVAILABLE, 1.0),
    ("TXT2IMG_MODEL_UNAVAILABLE", ErrorKind.UNAVAILABLE, None),
    ("INFERENCE_FAILED", ErrorKind.UNAVAILABLE, None),
])
async def test_failure_replies_map_their_code(code: str, kind: ErrorKind, retry_after: float | None) -> None:
    service, _, _ = make_service(lambda r: FakeSink.reply(r, status="failure", output_data=None,
                                                          error={"code": code, "message": "it broke"}))
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, {"text": "x"})
    assert (caught.value.kind, caught.value.code, caught.value.retry_after_s) == (kind, code, retry_after)
    assert caught.value.message == "it broke"


async def test_no_reply_by_the_deadline_is_408_and_the_late_reply_is_dropped() -> None:
    service, sink, table = make_service(lambda r: None)
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, {"text": "x"}, timeout_seconds=1)
    assert caught.value.kind is ErrorKind.TIMEOUT and caught.value.code == "INFERENCE_TIMEOUT"
    assert table.waiting == 0
    assert not table.resolve(sink.published[0][2]["correlation_id"], {})
    assert table.late_replies == 1


async def test_unknown_model_and_bad_input_are_refused_before_publishing() -> None:
    service, sink, _ = make_service()
    with pytest.raises(DomainError) as unknown:
        await service.infer(CALLER, "nobody/nothing", {"text": "x"})
    assert unknown.value.kind is ErrorKind.NOT_FOUND and unknown.value.code == "MODEL_NOT_FOUND"
    with pytest.raises(DomainError) as bad:
        await service.infer(CALLER, MINILM, {"texts": "not a list"})
    assert bad.value.kind is ErrorKind.INVALID and bad.value.code == "INVALID_INPUT"
    assert bad.value.details is not None and bad.value.details["errors"][0]["field"] == "input_data.texts"
    with pytest.raises(DomainError) as big:
        await service.infer(CALLER, MINILM, {"text": "x" * service.settings.inference_max_input_bytes})
    assert big.value.kind is ErrorKind.TOO_LARGE
    assert sink.published == []


async def test_broker_unavailable_is_503_with_retry_after() -> None:
    service, _, table = make_service(fail=EventsUnavailable("broker down", 2.0))
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, {"text": "x"})
    assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.retry_after_s == 2.0
    assert table.waiting == 0


async def test_a_revoked_reply_partition_re_sends_on_one_we_own() -> None:
    table: ReplyTable

    def answer(record: dict[str, Any]) -> dict[str, Any] | None:
        if record["reply_partition"] == 0:  # the rebalance moves partition 0 away meanwhile
            loop = asyncio.get_running_loop()
            loop.call_soon(table.revoked, [0, 1])
            loop.call_soon(table.assigned, [1])
            return None
        return FakeSink.reply(record)

    service, sink, table = make_service(answer, partitions=(0,))
    result = await service.infer(CALLER, MINILM, {"text": "x"})
    assert result["output_data"]["dimensions"] == 384
    first, second = (record for _, _, record, _ in sink.published)
    assert (first["reply_partition"], second["reply_partition"]) == (0, 1)
    assert first["correlation_id"] == second["correlation_id"]
    assert second["causation_id"] == first["message_id"] and table.revoked_waiters == 1


async def test_no_reply_partition_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "PARTITION_WAIT_S", 0.05)
    service, sink, _ = make_service(partitions=())
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, {"text": "x"})
    assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.code == "NO_REPLY_PARTITION"
    assert sink.published == []


# --- the worker's request handler --------------------------------------------------------------
class FakeRunner:
    def __init__(self, result: JsonDict | Exception) -> None:
        self.result = result
        self.calls: list[tuple[str, JsonDict]] = []

    async def infer_async(self, model_id: str, item: JsonDict, *, deadline: float | None = None) -> JsonDict:
        self.calls.append((model_id, item))
        if isinstance(self.result, Exception):
            raise self.result
        return dict(self.result)


def request(deadline_s: float = 30, **fields: Any) -> dict[str, Any]:
    now = utcnow()
    return {**new_envelope(service="api", instance="api-1"), "model_id": MINILM, "task_type": "txt2embed",
            "input_data": {"text": "hello"}, "parameters": {"normalize": True}, "priority": "high",
            "deadline": now + timedelta(seconds=deadline_s), "timeout_seconds": 30, "reply_partition": 4,
            **fields}


async def test_an_expired_request_is_answered_timeout_without_running() -> None:
    runner = FakeRunner({"embedding": [1.0]})
    handler = InferenceRequestHandler(runner, worker="w-1")
    response = await handler.answer(request(deadline_s=-1))
    assert response["status"] == "failure" and response["error"]["code"] == "INFERENCE_TIMEOUT"
    assert response["metadata"]["ran"] is False and runner.calls == [] and handler.expired == 1
    assert response["reply_partition"] == 4


async def test_success_reply_carries_batch_metadata_and_the_correlation_id() -> None:
    runner = FakeRunner({"embedding": [0.1, 0.2], BATCH_META: {"batch_size": 3, "inference_time_ms": 7.5}})
    handler = InferenceRequestHandler(runner, worker="w-1")
    req = request()
    response = await handler.answer(req)
    assert runner.calls == [(MINILM, {"text": "hello", "parameters": {"normalize": True}})]
    assert response["status"] == "success" and response["output_data"] == {"embedding": [0.1, 0.2]}
    assert response["correlation_id"] == req["correlation_id"] and response["causation_id"] == req["message_id"]
    assert response["metadata"]["batch_size"] == 3 and response["metadata"]["inference_time_ms"] == 7.5
    # what the worker publishes is a valid inference_response
    payload, _ = Codec().encode("inference_response", {**new_envelope(service="w", instance="w"), **response})
    assert Codec().decode(payload).record["correlation_id"] == req["correlation_id"]


@pytest.mark.parametrize(("error", "code"), [
    (InvalidInputError("bad text"), "INVALID_INPUT"),
    (ModelLoadError("no weights"), "MODEL_LOAD_FAILED"),
    (RuntimeError("segfault-ish"), "INFERENCE_FAILED"),
])
async def test_model_errors_become_failure_replies(error: Exception, code: str) -> None:
    response = await InferenceRequestHandler(FakeRunner(error), worker="w-1").answer(request())
    assert response["status"] == "failure" and response["error"]["code"] == code


async def test_undecodable_and_foreign_messages_raise_for_the_dead_letter_topic() -> None:
    handler = InferenceRequestHandler(FakeRunner({}), worker="w-1")
    with pytest.raises(DecodeError):
        await handler.respond(b"\x00not avro at all")
    other, _ = Codec().encode("inference_response", {
        **new_envelope(service="w", instance="w"), "model_id": MINILM, "status": "success"})
    with pytest.raises(TypeError):
        await handler.respond(other)
    encoded, _ = Codec().encode("inference_request", request())
    assert (await handler.respond(encoded))["status"] == "success"


def test_timed_runtime_tags_each_output_with_its_batch() -> None:
    class Echo(ModelRuntime):
        task_type = "txt2embed"
        loaded = True
        memory_bytes = 0

        def load(self) -> None: ...

        def close(self) -> None: ...

        def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
            return [{"n": i} for i, _ in enumerate(inputs)]

    outputs = TimedRuntime(Echo("m")).infer_batch([{}, {}])
    assert [o["n"] for o in outputs] == [0, 1]
    assert all(o[BATCH_META]["batch_size"] == 2 for o in outputs)


def test_offsets_commit_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12):
        tracker.started("t", 0, offset)
    tracker.finished("t", 0, 11)
    assert tracker.committable() == [] and tracker.in_flight() == 2
    tracker.finished("t", 0, 10)
    assert tracker.committable() == [("t", 0, 12)]
    assert not tracker.wait_idle([("t", 0)], 0.01)
    tracker.finished("t", 0, 12)
    assert tracker.wait_idle(None, 0.01) and tracker.committable() == [("t", 0, 13)]
    tracker.started("t", 1, 5)
    tracker.forget([("t", 1)])
    tracker.finished("t", 1, 5)  # a task finishing after its partition went: ignored
    assert tracker.committable() == []


# --- REST ----------------------------------------------------------------------------------------
ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def api() -> Iterator[tuple[TestClient, AppContext]]:
    settings = Settings(admin_api_key=SecretStr(ADMIN_KEY))
    table = ReplyTable()
    table.assigned([0])
    service = InferenceService(settings, FakeSink(table), table, models=MODELS)
    ctx = AppContext(settings=settings, store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                     events=RecordingSink(), inference=service)
    with TestClient(create_app(settings, ctx)) as client:
        yield client, ctx


@pytest.mark.parametrize("path", [MINILM, "sentence-transformers%2Fall-MiniLM-L6-v2"])
def test_infer_route_accepts_plain_and_url_encoded_ids(api: tuple[TestClient, AppContext], path: str) -> None:
    client, _ = api
    response = client.post(f"/api/v1/infer/{path}", json={"input_data": {"text": "hi"}}, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == MINILM and body["metadata"]["device"] == "cpu"
    assert body["metadata"]["priority"] == "medium"


def test_infer_route_errors(api: tuple[TestClient, AppContext]) -> None:
    client, ctx = api
    assert client.post(f"/api/v1/infer/{MINILM}", json={"input_data": {"text": "hi"}}).status_code == 401
    out_of_range = client.post(f"/api/v1/infer/{MINILM}", json={"input_data": {"text": "x"}, "timeout_seconds": 0},
                               headers=ADMIN)
    assert out_of_range.status_code == 400
    bad = client.post(f"/api/v1/infer/{MINILM}", json={"input_data": {"text": 5}}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_INPUT"
    assert bad.json()["details"]["errors"][0]["field"] == "input_data.text"
    missing = client.post("/api/v1/infer/no/such-model", json={"input_data": {"text": "x"}}, headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error_code"] == "MODEL_NOT_FOUND"
    ctx.inference = None
    unwired = client.post(f"/api/v1/infer/{MINILM}", json={"input_data": {"text": "x"}}, headers=ADMIN)
    assert unwired.status_code == 503 and "Retry-After" in unwired.headers


def test_expired_deadline_uses_aware_timestamps() -> None:
    # fastavro hands back aware UTC datetimes; naive ones (other producers) are read as UTC.
    handler = InferenceRequestHandler(FakeRunner({}), worker="w", clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))
    naive = request(deadline=datetime(2029, 12, 31, 23, 59), timestamp=datetime(2029, 12, 31, 23, 58))
    response = asyncio.run(handler.answer(naive))
    assert response["error"]["code"] == "INFERENCE_TIMEOUT"
