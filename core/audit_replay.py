"""Replaying the audit topic over a time window, for auditors: offsets found by time, JSON lines out,
the hash chain verified as records stream by."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from schemas.codec import Codec
from settings import Settings
from topology.lag import log_end
from topology.topics import AUDIT_EVENTS


def _millis(ts: datetime) -> int:
    return int((ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp() * 1000)


def matches(record: dict[str, Any], filters: dict[str, str]) -> bool:
    return all(str(record.get(key, "")).startswith(value) for key, value in filters.items())


def read_audit(settings: Settings, start: datetime, end: datetime, *, batch: int = 5000,
               codec: Codec | None = None) -> Iterator[dict[str, Any]]:
    """Every audit record produced in [start, end], partition by partition in log order
    (each chain lives on one partition, so chain order is preserved)."""
    codec = codec or Codec()
    topic = AUDIT_EVENTS.full_name(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "tributary-audit-replay",
                         "enable.auto.commit": False, "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    try:
        wanted = [TopicPartition(topic, p, _millis(start)) for p in range(AUDIT_EVENTS.partitions)]
        starts = consumer.offsets_for_times(wanted, timeout=10)
        end_ms = _millis(end)
        for tp in starts:
            if tp.offset < 0:
                continue  # nothing at or after start in this partition
            _, log_end_offset = log_end(consumer, TopicPartition(topic, tp.partition))
            consumer.assign([TopicPartition(topic, tp.partition, tp.offset)])
            position = tp.offset
            done = False
            while not done and position < log_end_offset:
                messages = consumer.consume(num_messages=batch, timeout=1.0)
                if not messages:
                    break
                for msg in messages:
                    if msg.error():
                        continue
                    position = (msg.offset() or 0) + 1
                    _, timestamp = msg.timestamp()
                    if timestamp > end_ms:
                        done = True
                        break
                    yield codec.decode(msg.value()).record
            consumer.unassign()
    finally:
        consumer.close()
