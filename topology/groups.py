"""Consumer groups: who reads what, where its dead letters go, how far it can scale.

The group id on the wire is ``group.full_id(settings)`` (the topic prefix applied), so test
sessions and environments sharing a cluster never join each other's groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from settings import Settings
from topology.topics import (
    AUDIT_EVENTS,
    DATA_TOPICS,
    DEVICE_HEARTBEATS,
    INFERENCE_REQUESTS,
    INFERENCE_RESPONSES,
    JOB_EVENTS,
    LEARNING_GRAPHS,
    MODEL_COMMANDS,
    TRAINING_ROUNDS,
    TRAINING_UPDATES,
    Priority,
    TopicSpec,
    dead_letter_topic,
)


class Group(StrEnum):
    """Every consumer group id (without the environment prefix)."""

    INFERENCE_HIGH = "inference-workers-high"
    INFERENCE_MEDIUM = "inference-workers-medium"
    INFERENCE_LOW = "inference-workers-low"
    DEVICE_PROCESSOR = "device-processor"
    ROUND_PROCESSOR = "round-processor"
    JOB_PROCESSOR = "job-processor"
    MODEL_PROCESSOR = "model-processor"
    LEARNING_GRAPH_PROCESSOR = "learning-graph-processor"
    AUDIT_SINK = "audit-sink"
    INGRESS_REPLIES = "ingress-replies"

    @classmethod
    def inference(cls, priority: Priority) -> Group:
        return cls(f"inference-workers-{priority.value}")


@dataclass(frozen=True)
class ConsumerGroupSpec:
    group_id: str
    inputs: tuple[TopicSpec, ...]  # topics consumed
    purpose: str

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"group {self.group_id} consumes nothing")

    @property
    def dead_letters(self) -> TopicSpec:
        return dead_letter_topic(self.group_id)

    @property
    def max_replicas(self) -> int:
        """More members than the smallest input's partitions would sit idle."""
        return min(t.partitions for t in self.inputs)

    def full_id(self, settings: Settings) -> str:
        return settings.prefixed(self.group_id)

    def input_names(self, settings: Settings) -> list[str]:
        return [t.full_name(settings) for t in self.inputs]


def inference_group(priority: Priority) -> ConsumerGroupSpec:
    return ConsumerGroupSpec(Group.inference(priority).value, (INFERENCE_REQUESTS[priority],),
                             f"inference workers for {priority.value}-priority requests")


GROUPS: tuple[ConsumerGroupSpec, ...] = (
    *(inference_group(p) for p in Priority),
    ConsumerGroupSpec(Group.DEVICE_PROCESSOR.value, (DEVICE_HEARTBEATS,),
                      "applies heartbeats, tracks device freshness"),
    ConsumerGroupSpec(Group.ROUND_PROCESSOR.value, (TRAINING_UPDATES, TRAINING_ROUNDS),
                      "round commands, update counting, FedAvg aggregation"),
    ConsumerGroupSpec(Group.JOB_PROCESSOR.value, (JOB_EVENTS,), "async job state in Cassandra"),
    ConsumerGroupSpec(Group.MODEL_PROCESSOR.value, (MODEL_COMMANDS,), "model load/unload bookkeeping"),
    ConsumerGroupSpec(Group.LEARNING_GRAPH_PROCESSOR.value, (LEARNING_GRAPHS,), "retraining requests"),
    ConsumerGroupSpec(Group.AUDIT_SINK.value, (AUDIT_EVENTS,), "audit archive and verification"),
    ConsumerGroupSpec(Group.INGRESS_REPLIES.value, (INFERENCE_RESPONSES,),
                      "ingress replicas awaiting synchronous inference replies"),
)
BY_GROUP: dict[str, ConsumerGroupSpec] = {g.group_id: g for g in GROUPS}


def group_spec(group_id: str) -> ConsumerGroupSpec:
    try:
        return BY_GROUP[group_id]
    except KeyError:
        raise KeyError(f"unknown consumer group {group_id!r}; known: {sorted(BY_GROUP)}") from None


def dlq_for(group: ConsumerGroupSpec | str) -> TopicSpec:
    """The dead-letter topic of a declared group (by spec or id)."""
    spec = group if isinstance(group, ConsumerGroupSpec) else group_spec(group)
    return spec.dead_letters


def all_topics() -> tuple[TopicSpec, ...]:
    """Data topics and one dead-letter topic per group: everything ``apply`` creates."""
    return (*DATA_TOPICS, *(g.dead_letters for g in GROUPS))
