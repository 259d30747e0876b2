"""Re-drive a dead-letter topic: every message goes back to the topic it came from.

The DLQ is read by its own consumer group (``<dlq>.redrive``) and committed as it goes, so
running it twice never sends a message twice. dlq-* headers are replaced by
``redriven-from`` and ``redrive-count`` so a message that fails again is recognisable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from messaging.dead_letter import DLQ_PREFIX, from_confluent
from producers.publisher import Publisher
from settings import Settings
from topology.lag import log_end


@dataclass
class RedriveReport:
    redriven: int = 0
    skipped: int = 0
    by_origin: dict[str, int] = field(default_factory=dict)


def redrive(settings: Settings, dlq_topic: str, *, limit: int | None = None, dry_run: bool = False,
            idle_timeout_s: float = 5.0) -> RedriveReport:
    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": f"{dlq_topic}.redrive",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": settings.session_timeout_ms, "fetch.wait.max.ms": settings.fetch_max_wait_ms,
    })
    publisher = None if dry_run else Publisher(settings, client_id="tributary-redrive")
    report = RedriveReport()
    try:
        # Only what is in the DLQ now: a message that fails again after redrive comes back to the
        # DLQ, and chasing it would loop for as long as the consumer keeps failing it.
        pending = _pending(consumer, dlq_topic)
        if limit is not None:
            pending = min(pending, limit)
        consumer.subscribe([dlq_topic])
        idle_since = time.monotonic()
        while report.redriven + report.skipped < pending:
            msg = consumer.poll(0.5)
            if msg is None:
                # Idle time counts from the group assignment (joining takes ~half the session timeout).
                if not consumer.assignment():
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > idle_timeout_s:
                    break
                continue
            if msg.error():
                continue
            idle_since = time.monotonic()
            raw = from_confluent(msg)
            headers = dict(raw.headers)
            origin = headers.get("dlq-origin-topic")
            if origin is None:
                report.skipped += 1
            else:
                origin_topic = origin.decode()
                count = int(headers.get("redrive-count", b"0")) + 1
                kept = [(k, v) for k, v in raw.headers if not k.startswith(DLQ_PREFIX)
                        and k not in ("redriven-from", "redrive-count")]
                if publisher is not None:
                    publisher.publish_sync(origin_topic, raw.value or b"", key=raw.key, headers=[
                        *kept, ("redriven-from", dlq_topic.encode()), ("redrive-count", str(count).encode())])
                report.redriven += 1
                report.by_origin[origin_topic] = report.by_origin.get(origin_topic, 0) + 1
            if not dry_run:
                # Commit only after the origin topic acknowledged the copy.
                consumer.commit(offsets=[TopicPartition(raw.topic, raw.partition, raw.offset + 1)],
                                asynchronous=False)
    finally:
        consumer.close()
        if publisher is not None:
            publisher.close()
    return report


def _pending(consumer: Consumer, topic: str) -> int:
    """Messages between the redrive group's committed offsets and the current log end."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return 0
    partitions = [TopicPartition(topic, p) for p in metadata.partitions]
    committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
    total = 0
    for tp in partitions:
        low, end = log_end(consumer, tp)
        start = committed.get(tp.partition, -1)
        total += max(0, end - (start if start >= 0 else low))
    return total
