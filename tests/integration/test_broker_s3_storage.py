"""Tansu's s3:// storage engine on the local SeaweedFS keeps messages and offsets across a restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import Settings
from infra.local_stack import SeaweedS3, TansuBroker

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, group: str, want: int) -> list[bytes]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 5, "session.timeout.ms": 6000, "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen.append(msg.value() or b"")
    consumer.commit(asynchronous=False)
    consumer.close()
    return seen


def test_broker_data_survives_restart_on_s3_storage(tmp_path: Path, stack: object) -> None:
    settings = Settings(data_dir=tmp_path, kafka_port=19392, s3_port=18633, broker_storage="s3")
    s3, broker = SeaweedS3(settings), TansuBroker(settings)
    s3.start(progress=lambda _: None)
    try:
        broker.start(progress=lambda _: None)
        bootstrap = settings.kafka_bootstrap_servers
        topic = f"durable-{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
        for i in range(500):
            producer.produce(topic, key=str(i), value=f"m{i}".encode())
        assert producer.flush(30) == 0
        first_batch = _consume(bootstrap, topic, "first", 200)  # commits offsets part-way
        assert len(first_batch) == 200

        broker.stop()
        broker.start(progress=lambda _: None)

        replay = _consume(bootstrap, topic, "replay", 500)
        assert sorted(replay) == sorted(f"m{i}".encode() for i in range(500))
        # The first group's committed offsets survived too: it resumes instead of starting over.
        rest = _consume(bootstrap, topic, "first", 300)
        assert sorted(rest + first_batch) == sorted(replay)
    finally:
        broker.stop()
        s3.stop()
