"""Consumer lag per group, topic and partition: how far each group is behind the log end."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from settings import Settings
from topology.groups import GROUPS, ConsumerGroupSpec, group_spec, inference_group
from topology.topics import Priority


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group has not committed here yet
    end: int
    lag: int

    def row(self) -> dict[str, Any]:
        return asdict(self)


def log_end(reader: Consumer, tp: TopicPartition, timeout_s: float = 5.0) -> tuple[int, int]:
    """(low, end) of a partition as the broker reports them (ListOffsets): ``end`` is the offset the
    next record will get, so ``end - committed`` is exactly what a group has not yet processed."""
    low, high = reader.get_watermark_offsets(tp, timeout=timeout_s)
    return low, high


def group_lag(settings: Settings, group: ConsumerGroupSpec, admin: AdminClient,
              offsets_reader: Consumer, end_timeout_s: float = 5.0,
              committed_timeout_s: float = 10.0) -> list[PartitionLag]:
    """Per partition the group reads: log end minus its committed offset (the low watermark where it
    never committed), each broker call bounded by its timeout."""
    group_id = group.full_id(settings)
    partitions = [TopicPartition(t.full_name(settings), p) for t in group.inputs for p in range(t.partitions)]
    committed: dict[tuple[str, int], int] = {}
    try:
        request = [ConsumerGroupTopicPartitions(group_id, partitions)]
        result = admin.list_consumer_group_offsets(request, request_timeout=committed_timeout_s)[group_id].result()
        for tp in result.topic_partitions:
            if tp.offset >= 0:
                committed[(tp.topic, tp.partition)] = tp.offset
    except KafkaException:
        pass  # a group that never committed has no offsets: everything is lag
    rows = []
    for tp in partitions:
        try:
            low, high = log_end(offsets_reader, tp, end_timeout_s)
        except KafkaException:
            continue  # topic missing: topology verify reports it
        done = committed.get((tp.topic, tp.partition))
        rows.append(PartitionLag(group.group_id, tp.topic, tp.partition, done, high,
                                 max(0, high - (done if done is not None else low))))
    return rows


def all_lag(settings: Settings, groups: tuple[ConsumerGroupSpec, ...] = GROUPS) -> list[PartitionLag]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    reader = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "tributary-lag-reader",
                       "enable.auto.commit": False, "fetch.wait.max.ms": settings.fetch_max_wait_ms})
    try:
        return [row for group in groups for row in group_lag(settings, group, admin, reader)]
    finally:
        reader.close()


def topic_lag(settings: Settings, group_id: str) -> list[PartitionLag]:
    """Committed offset vs log end for every partition a declared group consumes."""
    return all_lag(settings, (group_spec(group_id),))


def totals(rows: list[PartitionLag]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row.group] = out.get(row.group, 0) + row.lag
    return out


def queue_depths(settings: Settings, admin: AdminClient, reader: Consumer, timeout_s: float = 2.0) -> dict[str, int]:
    """Requests waiting per priority: the lag of that priority's inference group (a status call:
    every broker call bounded by ``timeout_s``)."""
    return {f"{priority.value}_priority": sum(row.lag for row in group_lag(settings, inference_group(priority),
                                                                         admin, reader, timeout_s, timeout_s))
            for priority in Priority}
