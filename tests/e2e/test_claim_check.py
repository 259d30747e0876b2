"""Large inputs and results by reference (issue 17 item 4), end to end on the real stack: a 20 MB image
through REST (JSON base64 and multipart) and gRPC to ``img2embed``, equal to the model run in this
process; the Kafka messages that carried it measured on the broker; a result above the threshold
fetched back from S3; a tampered claim object answered with a clear error and dead-lettered with
the reason; the 413 still there beyond the configured maximum."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from confluent_kafka import Producer
from PIL import Image

from consumers.inference.builtin import BuiltinModels
from core.artifacts import S3ArtifactStore
from core.claimcheck import INPUT_REFERENCE_INVALID, PREFIX, encode
from core.serving.builtin_specs import EFFICIENTNET_ID
from modelmora.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from schemas.clock import utcnow
from schemas.codec import Codec, new_envelope
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import HTTP_TIMEOUT, cosine, messages_in, read_until, records_until
from topology.groups import inference_group
from topology.topics import INFERENCE_REQUESTS, INFERENCE_RESPONSES, Priority, dead_letter_topic

pytestmark = pytest.mark.e2e
SIDE = 2582  # 2582 x 2582 RGB noise as an uncompressed PNG: 20.0 MB
TIMEOUT = httpx.Timeout(180.0)


@pytest.fixture(scope="module")
def big_png() -> bytes:
    pixels = np.random.default_rng(17).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=0)
    data = out.getvalue()
    assert 20_000_000 <= len(data) < 20 * 1024 * 1024, len(data)
    return data


@pytest.fixture(scope="module")
def in_process(system: RunningSystem) -> Callable[[list[bytes]], np.ndarray]:
    """EfficientNet-Lite0 run in this process on ONNX Runtime, no Kafka, no S3."""
    runtime = BuiltinModels(system.settings.data_dir / "models" / "builtin").create(EFFICIENTNET_ID)
    runtime.load()

    def embed(images: list[bytes]) -> np.ndarray:
        (output,) = runtime.infer_batch([{"images": [base64.b64encode(i).decode() for i in images]}])
        return np.asarray(output["embeddings"], dtype=np.float32)

    return embed


@pytest.fixture(scope="module")
def grpc_channel(system: RunningSystem) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(system.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


def claimed_requests(system: RunningSystem, priority: Priority) -> list[tuple[int, dict[str, Any]]]:
    """(wire size, record) of every request on ``priority``'s topic that carried a claim."""
    spec, codec = INFERENCE_REQUESTS[priority], Codec()
    found = []
    for message in messages_in(system.settings, spec.full_name(system.settings), range(spec.partitions)):
        record = codec.decode(message.value()).record
        if record.get("input_ref"):
            found.append((len(message.value() or b""), record))
    return found


def test_a_20_mb_image_over_rest_json_multipart_and_grpc_equals_in_process(
        system: RunningSystem, caller: dict[str, str], big_png: bytes,
        in_process: Callable[[list[bytes]], np.ndarray], grpc_channel: grpc.Channel) -> None:
    expected = in_process([big_png])[0]
    url = f"{system.base_url}/api/v1/infer/{EFFICIENTNET_ID}"
    as_json = httpx.post(url, headers=caller, timeout=TIMEOUT, json={
        "input_data": {"image": base64.b64encode(big_png).decode()}, "priority": "high", "timeout_seconds": 120})
    assert as_json.status_code == 200, as_json.text[:500]
    uploaded = httpx.post(f"{url}/upload", headers=caller, timeout=TIMEOUT,
                          files={"file": ("photo.png", big_png, "image/png")},
                          data={"priority": "high", "timeout_seconds": "120"})
    assert uploaded.status_code == 200, uploaded.text[:500]
    stub = inference_pb2_grpc.InferenceServiceStub(grpc_channel)
    over_grpc = stub.Infer(inference_pb2.InferenceRequest(
        model_id=EFFICIENTNET_ID, input_data=inference_pb2.InputData(image=big_png),
        priority=common_pb2.PRIORITY_HIGH, timeout_seconds=120),
        metadata=(("authorization", caller["Authorization"]),), timeout=180)

    for vector in (as_json.json()["output_data"]["embedding"], uploaded.json()["output_data"]["embedding"],
                   list(over_grpc.output_data.embedding.values)):
        assert len(vector) == expected.shape[0] == 1280
        assert cosine(vector, expected) > 0.9999
        np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), expected, rtol=1e-4, atol=1e-5)

    # On the broker: three requests carried the image by reference, each a small message.
    claimed = [(size, record) for size, record in claimed_requests(system, Priority.HIGH)
               if record["model_id"] == EFFICIENTNET_ID and record["input_ref"]["size"] > len(big_png)]
    assert len(claimed) == 3, [size for size, _ in claimed]
    for size, record in claimed:
        assert record["input_data"] == {} and record["input_ref"]["key"].startswith(f"{PREFIX}inputs/")
        assert size < 2048, size
    print(f"\n[claim-check] image {len(big_png)} B, base64 JSON input {claimed[0][1]['input_ref']['size']} B; "
          f"request messages on the broker: {sorted(size for size, _ in claimed)} B")


def test_a_result_above_the_threshold_comes_back_through_s3(
        system: RunningSystem, caller: dict[str, str], in_process: Callable[[list[bytes]], np.ndarray]) -> None:
    rng = np.random.default_rng(4)
    images = []
    for _ in range(24):  # 24 x 1280 floats: ~0.6 MB of JSON, above the 256 KiB threshold
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
        images.append(out.getvalue())
    response = httpx.post(f"{system.base_url}/api/v1/infer/{EFFICIENTNET_ID}", headers=caller, timeout=HTTP_TIMEOUT,
                          json={"input_data": {"images": [base64.b64encode(i).decode() for i in images]},
                                "parameters": {}, "priority": "high", "timeout_seconds": 90})
    assert response.status_code == 200, response.text[:500]
    got = np.asarray(response.json()["output_data"]["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, in_process(images), rtol=1e-4, atol=1e-5)
    # The reply that carried it: output_data by reference, the message small.
    spec, codec = INFERENCE_RESPONSES, Codec()
    sizes = [len(m.value() or b"") for m in messages_in(system.settings, spec.full_name(system.settings),
                                                         range(spec.partitions))
             if (codec.decode(m.value()).record.get("output_ref") or {}).get("size", 0) > 256 * 1024]
    assert sizes and max(sizes) < 2048, sizes
    print(f"\n[claim-check] result reply messages with output_ref: {sizes} B")


def test_an_async_job_with_a_large_input_runs_by_reference(
        system: RunningSystem, caller: dict[str, str], in_process: Callable[[list[bytes]], np.ndarray]) -> None:
    rng = np.random.default_rng(9)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(out, format="PNG", compress_level=0)
    image = out.getvalue()  # ~1 MB: over the threshold, under nothing else
    submitted = httpx.post(f"{system.base_url}/api/v1/infer/{EFFICIENTNET_ID}/async", headers=caller,
                           timeout=HTTP_TIMEOUT, json={"input_data": {"image": base64.b64encode(image).decode()},
                                                       "priority": "low", "timeout_seconds": 120})
    assert submitted.status_code == 202, submitted.text[:500]
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{system.base_url}/api/v1/jobs/{job_id}", headers=caller,
                               timeout=HTTP_TIMEOUT).json()["status"]) in ("queued", "processing"):
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.5)
    assert status == "completed"
    result = httpx.get(f"{system.base_url}/api/v1/jobs/{job_id}/result", headers=caller, timeout=HTTP_TIMEOUT)
    assert cosine(result.json()["output_data"]["embedding"], in_process([image])[0]) > 0.9999
    (record,) = [r for _, r in claimed_requests(system, Priority.LOW) if r.get("job_id") == job_id]
    assert record["input_data"] == {} and record["input_ref"]["size"] > len(image)


def test_a_tampered_claim_object_fails_the_request_clearly_and_is_dead_lettered(system: RunningSystem) -> None:
    settings = system.settings
    body = encode({"image": base64.b64encode(b"\x89PNG not really").decode(), "padding": "x" * 300_000})
    key = f"{PREFIX}inputs/e2e/{uuid.uuid4()}.json"
    S3ArtifactStore(settings).put(key, body[:-2] + b"!}")  # what S3 holds is not what the claim names
    correlation = str(uuid.uuid4())
    record = {**new_envelope(service="e2e", instance="e2e", correlation_id=correlation),
              "model_id": EFFICIENTNET_ID, "task_type": "img2embed", "input_data": {}, "parameters": {},
              "priority": "high", "deadline": utcnow() + timedelta(seconds=60), "timeout_seconds": 60,
              "reply_partition": 0, "input_ref": {"bucket": settings.s3_bucket, "key": key, "size": len(body),
                                                  "sha256": hashlib.sha256(body).hexdigest()}}
    payload, headers = Codec().encode("inference_request", record)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(INFERENCE_REQUESTS[Priority.HIGH].full_name(settings), payload, key=record["message_id"],
                     headers=list(headers))
    assert producer.flush(30) == 0

    (reply,) = records_until(settings, INFERENCE_RESPONSES, lambda r: r["correlation_id"] == correlation,
                             lambda found: len(found) >= 1, timeout_s=60)
    assert reply["status"] == "failure" and reply["error"]["code"] == INPUT_REFERENCE_INVALID
    assert "sha256" in reply["error"]["message"] and "not run" in reply["error"]["message"]

    dlq = dead_letter_topic(inference_group(Priority.HIGH).group_id).full_name(settings)
    letter = read_until(settings, dlq, 0, lambda m: m.value() == payload, timeout_s=60)
    why = dict(letter.headers() or [])
    assert why["dlq-error-class"] == b"ClaimCheckError" and b"sha256" in why["dlq-error-message"]


def test_beyond_the_configured_maximum_it_is_still_413(system: RunningSystem, caller: dict[str, str]) -> None:
    too_big = system.settings.max_request_bytes + 1
    response = httpx.post(f"{system.base_url}/api/v1/infer/{EFFICIENTNET_ID}", timeout=TIMEOUT,
                          headers={**caller, "content-type": "application/json"}, content=b"x" * too_big)
    assert response.status_code == 413 and response.json()["error_code"] == "REQUEST_TOO_LARGE"
