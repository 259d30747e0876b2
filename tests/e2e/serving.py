"""Helpers shared by the serving end-to-end tests (sync inference, async jobs, priorities)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from consumers.inference.builtin import MINILM_ID
from core.settings import Settings

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
