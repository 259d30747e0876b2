"""Helpers shared by the serving end-to-end tests (sync inference, async jobs, priorities)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

from core.serving.builtin_specs import MINILM_ID
from schemas.clock import utcnow
from schemas.codec import Codec, new_envelope
from settings import Settings
from topology.topics import INFERENCE_REQUESTS, Priority, TopicSpec

ENCODED_MINILM = MINILM_ID.replace("/", "%2F")
HTTP_TIMEOUT = httpx.Timeout(90.0)  # the first request may wait for a worker's group join and model load


def infer(base_url: str, headers: dict[str, str], text: str | list[str], model: str = ENCODED_MINILM,
          **body: Any) -> httpx.Response:
    payload = {"input_data": {"text": text}, "priority": "high", **body}
    return httpx.post(f"{base_url}/api/v1/infer/{model}", json=payload, headers=headers, timeout=HTTP_TIMEOUT)


def cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def read_until(settings: Settings, topic: str, partition: int, match: Callable[[Any], bool],
               timeout_s: float = 30.0) -> Any:
    """The first message of topic[partition] (from the beginning) that ``match`` accepts."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None and match(message):
                return message
    finally:
        consumer.close()
    raise AssertionError(f"nothing matching in {topic}[{partition}] within {timeout_s}s")


def messages_in(settings: Settings, topic: str, partitions: Iterable[int]) -> Iterator[Message]:
    """Every message of ``topic``'s ``partitions`` as they stand now: from each one's low watermark to
    the end it had when it was reached (fails if a partition stops short of it)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    try:
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, low)])
            position = low
            while position < high:
                message = consumer.poll(5.0)
                assert message is not None, f"{topic}[{partition}] stopped before offset {high}"
                if message.error() is not None:
                    continue
                position = (message.offset() or 0) + 1
                yield message
    finally:
        consumer.close()


def records_until(settings: Settings, spec: TopicSpec, keep: Callable[[dict[str, Any]], bool],
                  enough: Callable[[list[dict[str, Any]]], bool], timeout_s: float) -> list[dict[str, Any]]:
    """The decoded records of ``spec`` (all partitions, from the beginning, then as they arrive) that
    ``keep`` accepts, once ``enough`` holds for them or ``timeout_s`` has passed."""
    topic, codec = spec.full_name(settings), Codec()
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": f"e2e-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                         "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(spec.partitions)])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not enough(found) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            record = codec.decode(message.value()).record
            if keep(record):
                found.append(record)
    finally:
        consumer.close()
    return found


class RequestProducer:
    """A load generator: ``inference_request`` messages straight onto a priority's topic.

    Bypasses the ingress on purpose (no per-key rate limit, no reply waiting); replies go to
    ``reply_partition`` when given, else to whichever responses partition the key picks.
    """

    def __init__(self, settings: Settings, priority: Priority, *, service: str = "e2e-load") -> None:
        self.topic = INFERENCE_REQUESTS[priority].full_name(settings)
        self.priority = priority
        self.service = service
        self.codec = Codec()
        self.producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "linger.ms": 2})

    def send(self, text: str, *, reply_partition: int | None = None, timeout_s: int = 300,
             on_delivery: Callable[[str, KafkaError | None, Message], None] | None = None) -> str:
        """Produce one request; returns its correlation id (``on_delivery`` gets it with the report)."""
        correlation_id = str(uuid.uuid4())
        record = {**new_envelope(service=self.service, instance="e2e", correlation_id=correlation_id),
                  "model_id": MINILM_ID, "task_type": "txt2embed", "input_data": {"text": text}, "parameters": {},
                  "priority": self.priority.value, "deadline": utcnow() + timedelta(seconds=timeout_s),
                  "timeout_seconds": timeout_s, "reply_partition": reply_partition}
        payload, headers = self.codec.encode("inference_request", record)
        report = None if on_delivery is None else (
            lambda error, message: on_delivery(correlation_id, error, message))
        self.producer.produce(self.topic, payload, key=record["message_id"], headers=list(headers),
                              on_delivery=report)
        self.producer.poll(0)
        return correlation_id

    def flush(self) -> None:
        assert self.producer.flush(30) == 0
