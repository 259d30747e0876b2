"""Synchronous inference end to end: REST -> priority topic -> inference worker -> responses
partition of the waiting replica -> REST, on the real broker with the real built-in model."""

from __future__ import annotations

import itertools
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer

from cli.services import system_services
from cli.supervisor import Supervisor
from core.serving.builtin_specs import MINILM_ID
from schemas.clock import utcnow
from schemas.codec import Codec, new_envelope
from settings import Settings
from tests.e2e.conftest import RunningSystem, client_address, free_port, settings_env, wait_http
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT, cosine, infer, read_until
from topology.groups import inference_group
from topology.topics import INFERENCE_REQUESTS, INFERENCE_RESPONSES, Priority, dead_letter_topic

pytestmark = pytest.mark.e2e

def test_sync_embedding_equals_the_in_process_onnx_result(
        system: RunningSystem, caller: dict[str, str], reference: Callable[[list[str]], np.ndarray]) -> None:
    text = "Tributary routes every reply to the replica that waits for it."
    response = infer(system.base_url, caller, text)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == MINILM_ID
    embedding = body["output_data"]["embedding"]
    assert len(embedding) == 384
    assert cosine(embedding, reference([text])[0]) >= 0.999
    metadata = body["metadata"]
    assert metadata["device"] == "cpu" and metadata["batch_size"] >= 1
    assert 0 < metadata["inference_time_ms"] <= metadata["total_time_ms"]
    # a list of texts (and the id unencoded) gives one vector per text
    texts = ["first sentence", "second one"]
    many = infer(system.base_url, caller, texts, model=MINILM_ID)
    assert many.status_code == 200, many.text
    vectors = many.json()["output_data"]["embeddings"]
    assert [round(cosine(v, r), 3) for v, r in zip(vectors, reference(texts), strict=True)] == [1.0, 1.0]


def test_sync_embedding_p50_is_within_the_seeds_50_ms(system: RunningSystem, caller: dict[str, str]) -> None:
    """p50 of sequential requests through REST, Kafka and a worker within seed 001's "typical latency:
    <50ms for simple inference" (the benches measure it; this holds the promise)."""
    timings = []
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        url = f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}"
        http.post(url, json={"input_data": {"text": "warm-up"}, "priority": "high"}, headers=caller)
        for i in range(50):
            started = time.perf_counter()
            response = http.post(url, json={"input_data": {"text": f"latency probe {i}"}, "priority": "high"},
                                 headers=caller)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, response.text
    timings.sort()
    p50, p90 = statistics.median(timings), timings[int(len(timings) * 0.9)]
    print(f"\nsync txt2embed over REST + Kafka: p50 {p50:.1f} ms, p90 {p90:.1f} ms, max {timings[-1]:.1f} ms (n=50)")
    assert p50 < 50




def replica_partitions(base_url: str, timeout_s: float = 30.0) -> list[int]:
    """The responses partitions a replica owns, from its detailed health (settles after a rebalance)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{base_url}/api/v1/health", params={"detailed": "true"}, timeout=10).json()
        detail = health["components"]["inference_replies"]["detail"]
        found = re.search(r"owning responses partitions \[([\d, ]*)\]", detail)
        assert found is not None, detail
        partitions = [int(p) for p in found.group(1).split(",") if p.strip()]
        if partitions and "suspended []" in detail:
            return partitions
        if time.monotonic() > deadline:
            return partitions
        time.sleep(0.5)


def test_two_ingress_replicas_each_get_their_own_replies(
        system: RunningSystem, second_replica: str, caller: dict[str, str],
        reference: Callable[[list[str]], np.ndarray]) -> None:
    # Both replicas are members of the reply group, each answering on its own partitions.
    owned = [replica_partitions(base) for base in (system.base_url, second_replica)]
    assert all(owned) and not set(owned[0]) & set(owned[1]), owned
    assert len(owned[0]) + len(owned[1]) == INFERENCE_RESPONSES.partitions, owned

    texts = [f"replica test sentence number {i} about {word}"
             for i, word in enumerate(["rivers", "lakes", "clouds", "rain"] * 6)]
    bases = [system.base_url, second_replica]

    def call(index: int) -> tuple[int, httpx.Response]:
        return index, infer(bases[index % 2], caller, texts[index])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(len(texts))))
    expected = reference(texts)
    for index, response in results:
        assert response.status_code == 200, (bases[index % 2], response.text)
        assert cosine(response.json()["output_data"]["embedding"], expected[index]) >= 0.999, texts[index]


def test_requests_in_flight_survive_rebalances(
        system: RunningSystem, reference: Callable[[list[str]], np.ndarray]) -> None:
    """A replica joining and leaving the reply group revokes every partition (eager rebalance);
    requests that are waiting meanwhile still get their answer (kept or re-sent)."""
    keys = []
    for _ in range(3):  # one key per load thread: each stays far below the per-key rate limit
        device_id = f"{system.settings.topic_prefix}rebalance-{uuid.uuid4().hex[:8]}"
        registered = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": device_id},
                              headers=client_address(),
                                timeout=30)
        keys.append({"Authorization": f"Bearer {registered.json()['api_key']}"})
    stop = threading.Event()
    outcomes: list[tuple[str, httpx.Response]] = []

    def load(headers: dict[str, str], thread: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            text = f"rebalance probe {thread}-{i}"
            outcomes.append((text, infer(system.base_url, headers, text)))
            time.sleep(0.4)

    replica: Settings = system.settings.model_copy(update={"api_port": free_port(), "grpc_port": free_port()})
    api = [s for s in system_services(replica, settings_env(replica)) if s.name == "api"]
    supervisor = Supervisor(api, system.log_dir / "rebalance-replica", progress=lambda _: None)
    with ThreadPoolExecutor(3) as pool:
        threads = [pool.submit(load, headers, n) for n, headers in enumerate(keys)]
        try:
            supervisor.start()  # joins: every member's partitions are revoked and reassigned
            wait_http(f"http://127.0.0.1:{replica.api_port}/api/v1/health", timeout_s=90)
            replica_partitions(system.base_url)
            time.sleep(2)
        finally:
            supervisor.stop()  # leaves: a second rebalance
        replica_partitions(system.base_url)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.result()
    assert len(outcomes) >= 10
    failed = [(text, r.status_code, r.text[:200]) for text, r in outcomes if r.status_code != 200]
    assert failed == []
    expected = reference([text for text, _ in outcomes])
    for (text, response), vector in zip(outcomes, expected, strict=True):
        assert cosine(response.json()["output_data"]["embedding"], vector) >= 0.999, text
    health = httpx.get(f"{system.base_url}/api/v1/health", params={"detailed": "true"}, timeout=10).json()
    print(f"\nreply consumer after {len(outcomes)} requests across two rebalances: "
          f"{health['components']['inference_replies']['detail']}")


def test_unknown_model_is_404_and_bad_input_is_400_with_field_errors(
        system: RunningSystem, caller: dict[str, str]) -> None:
    missing = infer(system.base_url, caller, "x", model="no-such-org%2Fno-such-model")
    assert missing.status_code == 404 and missing.json()["error_code"] == "MODEL_NOT_FOUND"
    bad = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED_MINILM}", headers=caller, timeout=HTTP_TIMEOUT,
                     json={"input_data": {"text": 42}, "parameters": {"normalize": "sometimes"}})
    assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_INPUT"
    fields = {error["field"] for error in bad.json()["details"]["errors"]}
    assert fields == {"input_data.text", "parameters.normalize"}
    # txt2img has no offline model: the low-priority worker says so and the ingress answers 503
    txt2img = httpx.post(f"{system.base_url}/api/v1/infer/stabilityai/stable-diffusion-2-1", headers=caller,
                         json={"input_data": {"text": "a sunset"}, "priority": "low"}, timeout=HTTP_TIMEOUT)
    assert txt2img.status_code == 503 and txt2img.json()["error_code"] == "TXT2IMG_MODEL_UNAVAILABLE"


def test_a_poison_request_is_dead_lettered_and_the_next_one_is_served(
        system: RunningSystem, caller: dict[str, str]) -> None:
    settings = system.settings
    poison = f"not avro {uuid.uuid4()}".encode()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(INFERENCE_REQUESTS[Priority.HIGH].full_name(settings), poison, key=b"poison")
    assert producer.flush(10) == 0
    dlq = dead_letter_topic(inference_group(Priority.HIGH).group_id).full_name(settings)
    dead = read_until(settings, dlq, 0, lambda m: m.value() == poison)
    headers = dict(dead.headers() or [])
    assert headers["dlq-error-class"] == b"MalformedMessageError"
    assert headers["dlq-group"] == inference_group(Priority.HIGH).group_id.encode()
    served = infer(system.base_url, caller, "served after the poison message")
    assert served.status_code == 200, served.text


def test_an_expired_request_is_answered_timeout_without_running(system: RunningSystem) -> None:
    settings, codec = system.settings, Codec()
    correlation_id = str(uuid.uuid4())
    reply_partition = 5
    # input_data is invalid on purpose: had the model run, the answer would be INVALID_INPUT.
    record = {**new_envelope(service="e2e", instance="e2e", correlation_id=correlation_id),
              "model_id": MINILM_ID, "task_type": "txt2embed", "input_data": {}, "parameters": {},
              "priority": "high", "deadline": utcnow() - timedelta(seconds=5), "timeout_seconds": 1,
              "reply_partition": reply_partition}
    payload, headers = codec.encode("inference_request", record)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    producer.produce(INFERENCE_REQUESTS[Priority.HIGH].full_name(settings), payload, key=record["message_id"],
                     headers=[(name, value) for name, value in headers])
    assert producer.flush(10) == 0

    def is_reply(message: Any) -> bool:
        decoded = codec.decode(message.value())
        return bool(decoded.record["correlation_id"] == correlation_id)

    reply = read_until(settings, INFERENCE_RESPONSES.full_name(settings), reply_partition, is_reply)
    response = codec.decode(reply.value()).record
    assert response["status"] == "failure" and response["error"]["code"] == "INFERENCE_TIMEOUT"
    assert response["metadata"]["ran"] is False and response["causation_id"] == record["message_id"]


def test_metrics_report_inference_by_model_and_queue_depth_per_priority(
        system: RunningSystem, caller: dict[str, str]) -> None:
    assert infer(system.base_url, caller, "counted").status_code == 200
    metrics = httpx.get(f"{system.base_url}/metrics", timeout=30).text
    assert f'tributary_inference_requests_total{{model="{MINILM_ID}",outcome="success",priority="high"}}' in metrics
    assert "tributary_inference_e2e_duration_seconds_bucket" in metrics
    assert "tributary_inference_reply_batch_size_bucket" in metrics
    for priority in Priority:
        assert re.search(rf'tributary_inference_queue_depth{{priority="{priority.value}"}} \d', metrics), priority
