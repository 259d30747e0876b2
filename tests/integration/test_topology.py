"""Topology apply/verify and lag against the real Apache Kafka broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from settings import Settings
from topology.admin import ApplyReport, DriftKind, apply, inspect, verify
from topology.groups import Group, all_topics, group_spec
from topology.lag import topic_lag
from topology.topics import AUDIT_EVENTS, DEVICE_HEARTBEATS, LEARNING_GRAPHS, TRAINING_UPDATES

pytestmark = pytest.mark.integration

T = TypeVar("T")


@pytest.fixture
def fresh(settings: Settings) -> Settings:
    # A prefix of its own per test: these tests delete and mis-create topics.
    return settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}topo{uuid.uuid4().hex[:6]}."})


@pytest.fixture
def admin(fresh: Settings) -> Iterator[AdminClient]:
    client = AdminClient({"bootstrap.servers": fresh.kafka_bootstrap_servers})
    yield client
    # The broker is shared: leave no topics of this test behind.
    mine = [n for n in client.list_topics(timeout=10).topics if n.startswith(fresh.topic_prefix)]
    if mine:
        for future in client.delete_topics(mine, operation_timeout=10).values():
            future.result()


def _partitions(admin: AdminClient, name: str) -> int:
    topic = admin.list_topics(timeout=10).topics.get(name)
    return 0 if topic is None else len(topic.partitions)


def _settled(look: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """What ``look`` returns once ``done`` holds. Admin calls answer when the controller has
    committed a change; the broker that metadata and DescribeConfigs ask applies it a moment later."""
    deadline = time.monotonic() + timeout_s
    seen = look()
    while not done(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = look()
    return seen


def _is_noop(report: ApplyReport) -> bool:
    return not report.changed and not report.unfixable


def test_apply_creates_everything_then_is_a_no_op(fresh: Settings, admin: AdminClient) -> None:
    first = apply(fresh, admin)
    assert sorted(first.created) == sorted(t.full_name(fresh) for t in all_topics())
    assert not first.unfixable, first.rows()
    assert not first.configs_altered  # created with their configs
    existing = admin.list_topics(timeout=10).topics
    for spec in all_topics():
        assert len(existing[spec.full_name(fresh)].partitions) == spec.partitions

    second = apply(fresh, admin)
    assert _is_noop(second), second.rows()
    assert second.created == second.partitions_raised == second.configs_altered == []

    inspection = inspect(fresh, admin)
    assert inspection.drift == [] and verify(fresh) == []
    assert inspection.notes == [] and inspection.config_checkable


def test_verify_reports_a_deleted_topic_and_apply_recreates_it(fresh: Settings, admin: AdminClient) -> None:
    apply(fresh, admin)
    victim = DEVICE_HEARTBEATS.full_name(fresh)
    admin.delete_topics([victim], operation_timeout=10)[victim].result()

    drift = _settled(lambda: verify(fresh, admin), bool)
    assert drift  # the CLI exits non-zero on a non-empty list
    assert [(d.topic, d.kind) for d in drift] == [(victim, DriftKind.MISSING)]
    assert drift[0].row()["drift"] == "missing"

    again = apply(fresh, admin)
    assert again.created == [victim] and not again.unfixable, again.rows()
    assert _partitions(admin, victim) == DEVICE_HEARTBEATS.partitions
    assert verify(fresh, admin) == []
    assert _is_noop(apply(fresh, admin))


def test_apply_raises_partitions_that_are_too_low(fresh: Settings, admin: AdminClient) -> None:
    name = TRAINING_UPDATES.full_name(fresh)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()
    before = _settled(lambda: [d for d in verify(fresh, admin) if d.topic == name],
                      lambda drift: DriftKind.MISSING not in {d.kind for d in drift})
    assert (name, DriftKind.PARTITIONS_LOW, "3", "1") in [(d.topic, d.kind, d.expected, d.actual) for d in before]

    report = apply(fresh, admin)
    assert report.partitions_raised == [name] and not report.unfixable, report.rows()
    assert _partitions(admin, name) == TRAINING_UPDATES.partitions
    assert verify(fresh, admin) == []
    assert _is_noop(apply(fresh, admin))


def test_raising_partitions_keeps_the_records_already_written(fresh: Settings, admin: AdminClient) -> None:
    name = LEARNING_GRAPHS.full_name(fresh)
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result()
    _settled(lambda: _partitions(admin, name), lambda n: n == 2)
    producer = Producer({"bootstrap.servers": fresh.kafka_bootstrap_servers})
    producer.produce(name, b"keep me", partition=0)
    assert producer.flush(10) == 0

    report = apply(fresh, admin)
    assert name in report.partitions_raised and not report.unfixable, report.rows()
    assert _partitions(admin, name) == LEARNING_GRAPHS.partitions
    reader = Consumer({"bootstrap.servers": fresh.kafka_bootstrap_servers, "group.id": fresh.prefixed("keep")})
    try:
        assert reader.get_watermark_offsets(TopicPartition(name, 0), timeout=10) == (0, 1)
    finally:
        reader.close()


def test_config_drift_on_an_unset_key_is_found_and_fixed(fresh: Settings, admin: AdminClient) -> None:
    """A topic made by hand without our configs: Kafka reports its defaults, which differ."""
    name = AUDIT_EVENTS.full_name(fresh)
    admin.create_topics([NewTopic(name, num_partitions=AUDIT_EVENTS.partitions, replication_factor=1)])[name].result()
    drift = _settled(lambda: [d for d in verify(fresh, admin) if d.topic == name],
                     lambda drift: DriftKind.MISSING not in {d.kind for d in drift})
    assert {d.kind for d in drift} == {DriftKind.CONFIG}
    assert f"retention.ms={AUDIT_EVENTS.retention_ms}" in {d.expected for d in drift}

    report = apply(fresh, admin)
    assert name in report.configs_altered and not report.unfixable, report.rows()
    assert verify(fresh, admin) == []


def test_too_many_partitions_are_reported_not_touched(fresh: Settings, admin: AdminClient) -> None:
    name = AUDIT_EVENTS.full_name(fresh)  # declared with 3
    admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name].result()
    _settled(lambda: name in admin.list_topics(timeout=10).topics, bool)
    report = apply(fresh, admin)
    assert [(d.topic, d.kind, d.expected, d.actual) for d in report.unfixable] == [
        (name, DriftKind.PARTITIONS_HIGH, "3", "4")]
    assert _partitions(admin, name) == 4
    assert [(d.topic, d.kind) for d in verify(fresh, admin)] == [(name, DriftKind.PARTITIONS_HIGH)]


def test_config_drift_is_found_and_fixed(fresh: Settings, admin: AdminClient) -> None:
    apply(fresh, admin)
    name = AUDIT_EVENTS.full_name(fresh)
    resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "60000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource])[resource].result()

    inspection = _settled(lambda: inspect(fresh, admin), lambda seen: bool(seen.drift))
    assert inspection.notes == []
    [drift] = inspection.drift
    assert (drift.topic, drift.kind, drift.actual) == (name, DriftKind.CONFIG, "retention.ms=60000")
    assert drift.expected == f"retention.ms={AUDIT_EVENTS.retention_ms}"

    report = apply(fresh, admin)
    assert report.configs_altered == [name] and not report.unfixable, report.rows()
    assert verify(fresh, admin) == []
    assert _is_noop(apply(fresh, admin))


def test_topic_lag_compares_committed_offsets_with_the_log_end(fresh: Settings, admin: AdminClient) -> None:
    apply(fresh, admin)
    group = group_spec(Group.ROUND_PROCESSOR)
    topic = TRAINING_UPDATES.full_name(fresh)
    producer = Producer({"bootstrap.servers": fresh.kafka_bootstrap_servers})
    for i in range(4):
        producer.produce(topic, f"update-{i}".encode(), partition=0)  # one produce per batch
        producer.flush(10)
    producer.produce(topic, b"update-x", partition=1)
    assert producer.flush(10) == 0

    rows = topic_lag(fresh, group.group_id)
    assert [(r.topic, r.partition) for r in rows] == [(topic, p) for p in range(TRAINING_UPDATES.partitions)]
    assert [(r.committed, r.end, r.lag) for r in rows] == [(None, 4, 4), (None, 1, 1), (None, 0, 0)]

    group_id = group.full_id(fresh)
    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, 0, 3)])
    admin.alter_consumer_group_offsets([request])[group_id].result()
    rows = topic_lag(fresh, group.group_id)
    assert [(r.committed, r.lag) for r in rows] == [(3, 1), (None, 1), (None, 0)]
