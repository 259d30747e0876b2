"""The S3 claim check of large inference inputs and results, without servers: offload and resolve,
the checks a claim must pass, the messages it rides in (schema, JSON view, seed 001's schema),
the ingress's and the worker's use of it."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.context import AppContext
from consumers.inference.worker import InferenceRequestHandler
from core.api_keys import new_api_key
from core.artifacts import MemoryArtifactStore
from core.claimcheck import INPUT_REFERENCE_INVALID, PREFIX, ClaimCheck, ClaimCheckError, encode
from core.errors import DomainError
from core.fleet.memory_store import InMemoryFleetStore
from core.serving.service import InferenceService
from messaging.dead_letter import PERMANENT
from messaging.reply_consumer import ReplyTable
from schemas.base import JSON_DIR
from schemas.codec import Codec, new_envelope
from schemas.json_views import validate_json_view
from settings import Settings
from tests.recording_sink import RecordingSink
from tests.unit.test_reply_consumer import CALLER, MINILM, MODELS, FakeRunner, FakeSink, request

pytestmark = pytest.mark.unit
THRESHOLD = 4096
BUCKET = "tributary-artifacts"


def claims(store: MemoryArtifactStore | None = None) -> ClaimCheck:
    return ClaimCheck(store or MemoryArtifactStore(), bucket=BUCKET, threshold_bytes=THRESHOLD)


def large_input() -> dict[str, Any]:
    return {"texts": ["a sentence long enough to matter " * 20] * 10}  # ~6.6 KB of JSON


async def test_a_small_input_stays_inline_and_a_large_one_becomes_a_verified_claim() -> None:
    store = MemoryArtifactStore()
    check = claims(store)
    small = {"input_data": {"text": "hello"}}
    assert await check.offload_input(small) is small and store.objects == {}

    sent = await check.offload_input({"input_data": large_input(), "model_id": MINILM})
    assert sent["input_data"] == {} and sent["model_id"] == MINILM
    ref = sent["input_ref"]
    body = store.objects[ref["key"]]
    assert ref["key"].startswith(f"{PREFIX}inputs/") and ref["bucket"] == BUCKET
    assert ref["size"] == len(body) == len(encode(large_input())) > THRESHOLD
    assert ref["sha256"] == hashlib.sha256(body).hexdigest()

    resolved = await check.resolve_input(sent)
    assert resolved["input_data"] == large_input() and resolved["input_ref"] is None


async def test_large_outputs_round_trip_the_same_way() -> None:
    check = claims()
    reply = {"status": "success", "output_data": {"image_data": "x" * (THRESHOLD * 2)}}
    sent = await check.offload_output(reply)
    assert sent["output_data"] == {} and sent["output_ref"]["key"].startswith(f"{PREFIX}outputs/")
    assert (await check.resolve_output(sent))["output_data"] == reply["output_data"]


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda store, ref: store.objects.__setitem__(ref["key"], store.objects[ref["key"]][:-1] + b"]"), "sha256"),
    (lambda store, ref: store.objects.__setitem__(ref["key"], store.objects[ref["key"]] + b" "), "bytes"),
    (lambda store, ref: store.objects.pop(ref["key"]), "does not exist"),
    (lambda store, ref: ref.__setitem__("bucket", "someone-elses"), "only 'tributary-artifacts' is read"),
    (lambda store, ref: ref.__setitem__("key", "models/secret.onnx"), "outside claims/"),
])
async def test_a_claim_that_does_not_check_out_is_a_permanent_decode_error(tamper: Any, reason: str) -> None:
    store = MemoryArtifactStore()
    check = claims(store)
    sent = await check.offload_input({"input_data": large_input()})
    tamper(store, sent["input_ref"])
    with pytest.raises(ClaimCheckError, match=reason) as caught:
        await check.resolve_input(sent)
    assert isinstance(caught.value, PERMANENT)  # dead-lettered at once, never retried


async def test_the_claim_rides_the_current_schema_its_json_view_and_seed_001s_message_schema() -> None:
    sent = await claims().offload_input({**new_envelope(service="t", instance="t"), **request(),
                                         "input_data": large_input()})
    codec = Codec()
    payload, _ = codec.encode("inference_request", sent)
    assert len(payload) < 1024  # the message stays small whatever the input
    decoded = codec.decode(payload)
    assert decoded.writer_version == 3 and decoded.record["input_ref"] == sent["input_ref"]
    view = codec.to_json("inference_request", decoded.record)
    validate_json_view("inference_request", 3, view)
    # Seed 001 §4.2.1: input_data is still the required object ({}), the claim an extra property.
    seed = json.loads((JSON_DIR / "seed" / "InferenceRequestMessage.json").read_text())
    assert list(jsonschema.Draft7Validator(seed).iter_errors(view)) == []
    assert view["input_data"] == {} and set(view["input_ref"]) == {"bucket", "key", "size", "sha256"}


async def test_the_worker_runs_a_claimed_input_as_if_it_were_inline() -> None:
    store = MemoryArtifactStore()
    runner = FakeRunner({"embeddings": [[0.1]]})
    handler = InferenceRequestHandler(runner, worker="w-1", claims=claims(store))
    sent = await claims(store).offload_input(request(input_data=large_input()))
    response = await handler.answer(sent)
    assert response["status"] == "success"
    assert runner.calls == [(MINILM, {**large_input(), "parameters": {"normalize": True}})]


async def test_the_worker_answers_a_corrupted_claim_with_a_clear_error_without_running() -> None:
    store = MemoryArtifactStore()
    runner = FakeRunner({"embeddings": [[0.1]]})
    handler = InferenceRequestHandler(runner, worker="w-1", claims=claims(store))
    sent = await claims(store).offload_input(request(input_data=large_input()))
    store.objects[sent["input_ref"]["key"]] = b'{"texts": ["swapped"]}'
    response = await handler.answer(sent)
    assert response["status"] == "failure" and response["error"]["code"] == INPUT_REFERENCE_INVALID
    assert "was not run" in response["error"]["message"] and response["metadata"]["ran"] is False
    assert runner.calls == []


def claim_service(store: MemoryArtifactStore, answer: Any = "echo") -> tuple[InferenceService, FakeSink]:
    table = ReplyTable()
    table.assigned((2,))
    sink = FakeSink(table, answer)
    return InferenceService(Settings(), sink, table, models=MODELS, claims=claims(store)), sink


async def test_the_ingress_sends_a_large_input_by_reference_and_fetches_a_large_result() -> None:
    store = MemoryArtifactStore()
    big_output = {"embeddings": [[0.25] * 384] * 40}  # ~80 KB of JSON
    outputs = claims(store)

    def answer(record: dict[str, Any]) -> dict[str, Any]:
        reply = FakeSink.reply(record, output_data=big_output)
        reply["output_ref"] = outputs.put("outputs", encode(big_output)).as_record()
        reply["output_data"] = {}
        return reply

    service, sink = claim_service(store, answer)
    result = await service.infer(CALLER, MINILM, large_input())
    assert result["output_data"] == big_output
    ((_, _, record, _),) = sink.published
    assert record["input_data"] == {} and record["input_ref"]["size"] > THRESHOLD
    assert json.loads(store.objects[record["input_ref"]["key"]]) == large_input()
    small = await service.infer(CALLER, MINILM, {"text": "hi"})
    assert sink.published[-1][2]["input_ref"] is None and small["output_data"] == big_output


async def test_a_result_whose_claim_fails_is_a_clear_503_not_a_500() -> None:
    store = MemoryArtifactStore()

    def answer(record: dict[str, Any]) -> dict[str, Any]:
        return FakeSink.reply(record, output_data={}, output_ref={"bucket": BUCKET, "key": f"{PREFIX}outputs/gone",
                                                                  "size": 10, "sha256": "0" * 64})

    service, _ = claim_service(store, answer)
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, {"text": "hi"})
    assert caught.value.code == "RESULT_REFERENCE_INVALID" and "does not exist" in caught.value.message


async def test_an_unavailable_object_store_is_503_and_nothing_is_published() -> None:
    store = MemoryArtifactStore()
    store.available = False
    service, sink = claim_service(store)
    with pytest.raises(DomainError) as caught:
        await service.infer(CALLER, MINILM, large_input())
    assert caught.value.code == "SERVICE_UNAVAILABLE" and caught.value.retry_after_s == 2.0
    assert sink.published == []


# --- the multipart route ------------------------------------------------------------------------
ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
IMG2EMBED = "efficientnet-lite0"


@pytest.fixture
def upload_api() -> Iterator[tuple[TestClient, FakeSink]]:
    settings = Settings(admin_api_key=SecretStr(ADMIN_KEY))
    table = ReplyTable()
    table.assigned([0])
    sink = FakeSink(table)
    service = InferenceService(settings, sink, table, models={**MODELS, IMG2EMBED: "img2embed"},
                               claims=claims())
    ctx = AppContext(settings=settings, store=InMemoryFleetStore(), artifacts=MemoryArtifactStore(),
                     events=RecordingSink(), inference=service)
    with TestClient(create_app(settings, ctx)) as client:
        yield client, sink


def test_an_uploaded_image_becomes_the_base64_input_of_the_same_request(
        upload_api: tuple[TestClient, FakeSink]) -> None:
    client, sink = upload_api
    image = b"\x89PNG\r\n" + bytes(range(256)) * 40  # ~10 KB: above the test threshold, sent by reference
    response = client.post(f"/api/v1/infer/{IMG2EMBED}/upload", headers=ADMIN,
                           files={"file": ("p.png", image, "image/png")},
                           data={"parameters": '{"normalize": false}', "priority": "high", "timeout_seconds": "30"})
    assert response.status_code == 200, response.text
    ((topic, _, record, _),) = sink.published
    assert topic.endswith(".high") and record["parameters"] == {"normalize": False}
    assert record["input_data"] == {} and record["input_ref"]["size"] > THRESHOLD
    several = client.post(f"/api/v1/infer/{IMG2EMBED}/upload", headers=ADMIN,
                          files=[("files", ("a.png", b"a" * 10, "image/png")), ("files", ("b.png", b"b", "image/png"))])
    assert several.status_code == 200, several.text
    assert sink.published[-1][2]["input_data"] == {"images": [base64.b64encode(b"a" * 10).decode(),
                                                              base64.b64encode(b"b").decode()]}


@pytest.mark.parametrize(("files", "data", "field"), [
    ({}, {}, "file"),
    ([("file", ("a.png", b"a", "image/png")), ("files", ("b.png", b"b", "image/png"))], {}, "file"),
    ({"file": ("a.png", b"a", "image/png")}, {"parameters": "[1, 2]"}, "parameters"),
    ({"file": ("a.png", b"a", "image/png")}, {"parameters": "{not json"}, "parameters"),
    ({"file": ("a.png", b"a", "image/png")}, {"timeout_seconds": "0"}, "timeout_seconds"),
])
def test_a_malformed_upload_is_a_400_naming_the_field(upload_api: tuple[TestClient, FakeSink], files: Any,
                                                      data: dict[str, str], field: str) -> None:
    client, sink = upload_api
    response = client.post(f"/api/v1/infer/{IMG2EMBED}/upload", headers=ADMIN, files=files or None,
                           data=data or None)
    assert response.status_code == 400, response.text
    assert field in json.dumps(response.json()["details"]) and sink.published == []


def test_inference_uploads_get_the_json_bound_and_model_uploads_keep_theirs() -> None:
    from api.limits import MULTIPART_OVERHEAD_BYTES, BodySizeLimit

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    limits = BodySizeLimit(app, max_request_bytes=32 << 20, max_upload_bytes=2 << 20)
    multipart = "multipart/form-data; boundary=x"
    assert limits.limit_for(multipart, f"/api/v1/infer/{IMG2EMBED}/upload") == (32 << 20) + MULTIPART_OVERHEAD_BYTES
    assert limits.limit_for(multipart, "/api/v1/models/m/versions/upload") == (2 << 20) + MULTIPART_OVERHEAD_BYTES
    assert limits.limit_for("application/json", "/api/v1/infer/m") == 32 << 20
