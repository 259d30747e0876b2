"""Topology apply/verify against the real broker (Tansu locally; Apache Kafka elsewhere)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from core.settings import Settings
from topology.admin import ApplyReport, DriftKind, apply, inspect, verify
from topology.groups import Group, all_topics, group_spec
from topology.lag import topic_lag
from topology.topics import AUDIT_EVENTS, DEVICE_HEARTBEATS, JOB_EVENTS, LEARNING_GRAPHS, TRAINING_UPDATES

pytestmark = pytest.mark.integration


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
    # All topics, never one by name: naming a topic in a metadata request creates it on Tansu.
    return len(admin.list_topics(timeout=10).topics[name].partitions)


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
    assert second.created == second.partitions_raised == second.configs_altered == second.recreated == []

    inspection = inspect(fresh, admin)
    assert inspection.drift == [] and verify(fresh) == []
    if inspection.config_checkable:  # Tansu 0.6 reports the configs set at creation
        assert inspection.notes == []


def test_verify_reports_a_deleted_topic_and_apply_recreates_it(fresh: Settings, admin: AdminClient) -> None:
    apply(fresh, admin)
    victim = DEVICE_HEARTBEATS.full_name(fresh)
    admin.delete_topics([victim], operation_timeout=10)[victim].result()

    drift = verify(fresh, admin)
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
    before = [d for d in verify(fresh, admin) if d.topic == name]
    assert (name, DriftKind.PARTITIONS_LOW, "3", "1") in [(d.topic, d.kind, d.expected, d.actual) for d in before]

    report = apply(fresh, admin)
    if report.partitions_raised:  # Apache Kafka: CreatePartitions
        assert report.partitions_raised == [name]
    else:  # Tansu 0.6 has no CreatePartitions: the drift is reported, never hidden
        [unfixable] = [d for d in report.unfixable if d.kind == DriftKind.PARTITIONS_LOW]
        assert (unfixable.topic, unfixable.expected, unfixable.actual) == (name, "3", "1")
        assert "not supported" in unfixable.detail
        assert [d.topic for d in verify(fresh, admin)] == [name]
        # The topic never held a record, so apply may re-make it with the declared count.
        report = apply(fresh, admin, recreate_empty=True)
        assert report.recreated == [name], report.rows()
    assert not report.unfixable, report.rows()
    assert _partitions(admin, name) == TRAINING_UPDATES.partitions
    assert verify(fresh, admin) == []


def test_apply_never_recreates_a_topic_that_holds_records(fresh: Settings, admin: AdminClient) -> None:
    name = LEARNING_GRAPHS.full_name(fresh)
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result()
    producer = Producer({"bootstrap.servers": fresh.kafka_bootstrap_servers})
    producer.produce(name, b"keep me", partition=0)
    assert producer.flush(10) == 0

    report = apply(fresh, admin, recreate_empty=True)
    assert name not in report.recreated
    if name not in report.partitions_raised:  # Tansu: reported, and the record is still there
        [unfixable] = [d for d in report.unfixable if d.topic == name]
        assert unfixable.kind == DriftKind.PARTITIONS_LOW and "holds records" in unfixable.detail
        assert _partitions(admin, name) == 2


def test_too_many_partitions_are_reported_not_touched(fresh: Settings, admin: AdminClient) -> None:
    name = AUDIT_EVENTS.full_name(fresh)  # declared with 3
    admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)])[name].result()
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

    inspection = inspect(fresh, admin)
    if not inspection.config_checkable:
        assert inspection.drift == [] and inspection.notes  # said so, did not crash
        pytest.skip(inspection.notes[0])
    [drift] = inspection.drift
    assert (drift.topic, drift.kind, drift.actual) == (name, DriftKind.CONFIG, "retention.ms=60000")
    assert drift.expected == f"retention.ms={AUDIT_EVENTS.retention_ms}"

    report = apply(fresh, admin)
    assert report.configs_altered == [name] and not report.unfixable, report.rows()
    assert verify(fresh, admin) == []
    assert _is_noop(apply(fresh, admin))


def test_topic_lag_compares_committed_offsets_with_the_log_end(fresh: Settings, admin: AdminClient) -> None:
    apply(fresh, admin)
    group = group_spec(Group.JOB_PROCESSOR)
    topic = JOB_EVENTS.full_name(fresh)
    producer = Producer({"bootstrap.servers": fresh.kafka_bootstrap_servers})
    for i in range(4):
        producer.produce(topic, f"job-{i}".encode(), partition=0)  # one produce per batch
        producer.flush(10)
    producer.produce(topic, b"job-x", partition=1)
    assert producer.flush(10) == 0

    rows = topic_lag(fresh, group.group_id)
    assert [(r.topic, r.partition) for r in rows] == [(topic, p) for p in range(JOB_EVENTS.partitions)]
    assert [(r.committed, r.end, r.lag) for r in rows] == [(None, 4, 4), (None, 1, 1), (None, 0, 0)]

    group_id = group.full_id(fresh)
    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, 0, 3)])
    admin.alter_consumer_group_offsets([request])[group_id].result()
    rows = topic_lag(fresh, group.group_id)
    assert [(r.committed, r.lag) for r in rows] == [(3, 1), (None, 1), (None, 0)]
