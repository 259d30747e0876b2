"""Lag reporting against the real broker: committed offsets vs log end, per partition and per group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from settings import Settings
from topology.admin import apply
from topology.groups import BY_GROUP
from topology.lag import all_lag, totals
from topology.topics import DEVICE_HEARTBEATS

pytestmark = pytest.mark.integration


def keda_lag(settings: Settings, group_id: str, topic: str) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    partitions = [TopicPartition(topic, p) for p in range(DEVICE_HEARTBEATS.partitions)]
    answers = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions},  # type: ignore[no-untyped-call]
                                 request_timeout=10)
    latest = {(tp.topic, tp.partition): future.result().offset for tp, future in answers.items()}
    request = [ConsumerGroupTopicPartitions(group_id, partitions)]
    committed = {(tp.topic, tp.partition): tp.offset
                 for tp in admin.list_consumer_group_offsets(request)[group_id].result().topic_partitions
                 if tp.offset >= 0}
    return {key: end - committed.get(key, 0) for key, end in latest.items()}


def test_lag_counts_what_the_group_has_not_committed(settings: Settings) -> None:
    own = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}lag."})
    apply(own)
    topic = DEVICE_HEARTBEATS.full_name(own)
    producer = Producer({"bootstrap.servers": own.kafka_bootstrap_servers})
    for i in range(10):
        producer.produce(topic, key=f"device-{i}", value=b"hb")
    assert producer.flush(10) == 0

    group = BY_GROUP["device-processor"]
    assert totals(all_lag(own, (group,))) == {"device-processor": 10}  # never committed: all of it

    consumer = Consumer({"bootstrap.servers": own.kafka_bootstrap_servers, "group.id": group.full_id(own),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": own.fetch_max_wait_ms,
                         "session.timeout.ms": own.session_timeout_ms})
    consumer.subscribe([topic])
    taken = 0
    deadline = time.monotonic() + 30
    while taken < 4 and time.monotonic() < deadline:
        msg = consumer.poll(0.3)
        if msg is not None and not msg.error():
            consumer.commit(message=msg, asynchronous=False)
            taken += 1
    consumer.close()
    rows = all_lag(own, (group,))
    assert sum(r.lag for r in rows) == 6
    assert sum(r.end for r in rows) == 10 and len(rows) == DEVICE_HEARTBEATS.partitions
    # Per partition, exactly what KEDA's Kafka scaler computes (infra/k8s/keda-scaledobjects.yaml):
    # ListOffsets(latest) minus the committed offset, or the latest offset where the group never
    # committed (offsetResetPolicy: earliest), asked through the admin API rather than a consumer.
    assert {(r.topic, r.partition): r.lag for r in rows} == keda_lag(own, group.full_id(own), topic)

    env = {**os.environ, "TRIBUTARY_TOPIC_PREFIX": own.topic_prefix}
    out = subprocess.run([sys.executable, "-m", "cli", "lag", "--group", "device-processor", "--json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["totals"] == {"device-processor": 6} and report["total"] == 6
